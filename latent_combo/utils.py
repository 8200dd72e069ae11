"""Small shared helpers: device choice, seeding, RNG state capture, atomic file writes, the finite check."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions and matmuls run in hardware here: CUDA, or a CPU with AVX512-BF16 or AMX
    (torch.cpu's own checks). Elsewhere oneDNN emulates bf16, which can run slower than fp32."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


@functools.cache
def cpu_has_bf16() -> bool:
    """torch.cpu's checks, asked once per process (autocast asks at every world-model update)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def autocast(device: torch.device, precision: str):
    """The world model's autocast context: convolutions and matmuls in bf16, reductions and losses in fp32
    (as torch.autocast assigns them). "auto" turns it on where the hardware has bf16 (`native_bf16`): on
    CUDA, and on CPUs with AVX512-BF16 / AMX, where a cpu-preset update ran 1.24-1.5x faster than fp32 and
    the probe read the same per update (docs/world-model.md, "Dreamer practice"). "bf16" forces it anywhere,
    "fp32" turns it off."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    on = precision == "bf16" or (precision == "auto" and native_bf16(device))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (fp32 storage, 10-bit-mantissa products, fp32 sums): the
    agent's fp32 updates run on tensor cores; no effect on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG, so a resumed run draws the same numbers as an uninterrupted one."""
    # numpy's legacy state as a dict with its key array as a list: plain data, loadable with weights_only.
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = {**numpy_state, "state": {**numpy_state["state"],
                                                "key": np.asarray(numpy_state["state"]["key"], np.uint32)}}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file, then rename: a killed writer never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class NonFiniteLoss(RuntimeError):
    pass


def synced(metrics: dict) -> dict:
    """Tensor metrics -> Python floats with a single host-device transfer; other values pass through."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    if not keys:
        return dict(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).tolist()
    return {**metrics, **dict(zip(keys, values))}


class FiniteCheck:
    """Watches every step's metrics for NaN / inf without a host-device sync per step: the flags are
    accumulated on the device and read by `check`, which the loops call on log and checkpoint steps (on
    CPU, where reading is free, every step). Nothing non-finite is ever checkpointed."""

    def __init__(self, stage: str, every_step: bool):
        self.stage, self.every_step = stage, every_step
        self.bad, self.first = None, None

    def add(self, metrics: dict, step: int) -> None:
        tensors = {k: v for k, v in metrics.items() if torch.is_tensor(v)}
        floats = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
        if floats:
            self._raise(floats, step)
        if tensors:
            if self.bad is not None and self.keys != list(tensors):
                self.check(step)  # another set of metrics: settle the old one first
            flags = ~torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in tensors.values()]))
            self.bad = flags if self.bad is None else self.bad | flags
            self.keys = list(tensors)
            if self.first is None:
                self.first = step
            if self.every_step:
                self.check(step)

    def check(self, step: int) -> None:
        bad, first, self.bad, self.first = self.bad, self.first, None, None
        if bad is not None and bool(bad.any()):
            self._raise([k for k, b in zip(self.keys, bad.tolist()) if b], step,
                        since=None if self.every_step else first)

    def _raise(self, keys, step, since=None):
        when = f"at step {step}" if since is None or since == step else f"between steps {since} and {step}"
        raise NonFiniteLoss(f"{self.stage}: non-finite {', '.join(keys)} {when}; stopping. The last good "
                            "checkpoint in the run folder is intact (lower the learning rate or check the data).")


def flatten(d: dict, prefix: tuple = ()) -> dict:
    """Nested dict -> {key path tuple: leaf value}, e.g. {"agent": {"beta": 1}} -> {("agent", "beta"): 1}."""
    out = {}
    for key, value in d.items():
        out.update(flatten(value, prefix + (key,)) if isinstance(value, dict) else {prefix + (key,): value})
    return out
