"""Helpers shared by the bench scripts: threads, the fp32 matmul peak, FLOP counting, timing, tables."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def set_threads(threads: int) -> int:
    """`threads` <= 0 means one per core (os.cpu_count())."""
    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def machine_line() -> str:
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.2f}")


def load_note() -> str | None:
    """A warning when other processes already keep the cores busy (every figure is then lower, and
    OpenMP threads that wait on each other can make multi-threaded runs many times slower)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < 0.5 * cores:
        return None
    return (f"note: load average {load:.2f} on {cores} cores before this run: other processes compete for the "
            f"cores, so every figure below is lower than on an idle machine; OpenMP threads that spin-wait on each "
            f"other then run many times slower: compare --threads 1, or OMP_WAIT_POLICY=PASSIVE in the environment")


def matmul_peak(n: int = 2048, reps: int = 5, seconds: float = 1.0) -> float:
    """Best observed fp32 GFLOP/s of an n x n @ n x n torch.mm (2 n^3 FLOPs) with the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up (allocations, MKL dispatch)
    best, t_end = 0.0, time.perf_counter() + seconds
    for i in range(1000):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
        if i + 1 >= reps and time.perf_counter() > t_end:
            break
    return best


def count_flops(fn) -> int:
    """FLOPs (matmul, conv, bmm, ...: what torch.utils.flop_counter counts) of one call of `fn`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_it(fn, iters: int, warmup: int = 1, min_seconds: float = 0.0) -> float:
    """Seconds per call of `fn`: `warmup` untimed calls, then at least `iters` calls (and at least
    `min_seconds`, for fast functions), timed together."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while n < iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def print_table(headers: list[str], rows: list[list], aligns: str | None = None) -> None:
    """Plain fixed-width table; `aligns` is one '<' or '>' per column (default: first left, rest right)."""
    aligns = aligns or "<" + ">" * (len(headers) - 1)
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, aligns, widths))
    print(line)
    print("-" * len(line))
    for r in cells:
        print("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths)), flush=True)
