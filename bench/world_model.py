"""World-model update speed at a preset's sizes (default `paper`): latent_combo's WorldModel against the
plain reference, in frames per second and in share of the fp32 matmul peak.

    .venv/bin/python bench/world_model.py [--preset quality] [--quick] [--sizes 16x50,50x50] [--iters 3]
        [--threads N] [--no-reference] [--precision fp32,bf16]

One update = ELBO loss on a (B, T) batch of random 64x64x3 uint8 images, backward, gradient clipping
and an Adam step (as latent_combo.world_model_training does). The batch is built once with
latent_combo.world_model's to_torch (data loading is not timed). One warm-up update (run under the FLOP
counter), then --iters timed updates.

GFLOP/s = FLOPs of one forward + backward (counted by torch.utils.flop_counter.FlopCounterMode: matmuls
and convolutions) / seconds per update, compared with the fp32 matmul peak measured in the same run
(best torch.mm of two 2048 x 2048 matrices). --precision times latent_combo's update under each precision
in turn (bf16: torch.autocast, as `precision=bf16` trains; "vs fp32" compares them, same run, same batch).
"reference" is bench/reference.py's RefWorldModel: the same network written plainly (per-step Python
loop doing encoder, GRU, posterior, each of the K prior heads, decoder and reward head one step at a time).
Printed, not asserted; other load on the machine lowers every column.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import count_flops, load_note, machine_line, matmul_peak, print_table, set_threads, time_it

ACTION_DIM = 6  # walker


def make_batch(B: int, T: int, seed: int = 0) -> dict:
    from latent_combo.world_model import to_torch

    rng = np.random.default_rng(seed)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    batch = {
        "image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (B, T, ACTION_DIM)).astype(np.float32),
        "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
        "is_first": is_first,
    }
    return to_torch(batch, "cpu")


def latent_combo_update(cfg):
    from latent_combo.world_model import WorldModel

    wm = WorldModel(cfg, "image", ACTION_DIM)
    opt = torch.optim.Adam(wm.parameters(), cfg.lr, eps=1e-5)

    def update(batch):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = wm.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), cfg.grad_clip)
        opt.step()

    return update, sum(p.numel() for p in wm.parameters())


def reference_update(cfg):
    from reference import RefWorldModel, RefWorldModelTrainer

    ref = RefWorldModel(ACTION_DIM, cfg.deter, cfg.stoch, cfg.hidden, cfg.depth, cfg.ensemble, cfg.min_std,
                        cfg.kl_free, cfg.kl_scale, cfg.obs_scale, cfg.reward_scale)
    trainer = RefWorldModelTrainer(ref, cfg.lr, cfg.grad_clip)
    return trainer.update, sum(p.numel() for p in ref.parameters())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", help="network sizes from this preset (its batch x length is the "
                   "default size under --quick)")
    p.add_argument("--quick", action="store_true", help="one size only, 2 timed updates (about a minute)")
    p.add_argument("--sizes", default=None, help="comma-separated BxT (default 16x50,50x50)")
    p.add_argument("--iters", type=int, default=None, help="timed updates per row (default 3; quick: 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: os.cpu_count())")
    p.add_argument("--no-reference", action="store_true", help="skip the reference implementation")
    p.add_argument("--precision", default="fp32", help="comma-separated, of fp32 and bf16: latent_combo's update "
                   "under each (default fp32; the reference always runs fp32)")
    a = p.parse_args(argv)
    from latent_combo.config import resolve
    from latent_combo.utils import autocast

    set_threads(a.threads)
    torch.manual_seed(0)
    cfg = resolve(a.preset).wm
    own = f"{cfg.batch}x{cfg.length}"
    sizes = a.sizes or (("16x50" if a.preset == "paper" else own) if a.quick else
                        ("16x50,50x50" if a.preset == "paper" else own))
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in sizes.split(",")]
    iters = a.iters or (2 if a.quick else 3)

    print(machine_line())
    if load_note():
        print(load_note())
    print(f"world model: {a.preset} sizes deter {cfg.deter}, stoch {cfg.stoch}, hidden {cfg.hidden}, "
          f"depth {cfg.depth}, K {cfg.ensemble}; {iters} timed updates per row after 1 warm-up")
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3 torch.mm): {peak:.1f} GFLOP/s")

    precisions = a.precision.split(",")
    if any(pr not in ("fp32", "bf16") for pr in precisions):
        p.error(f"--precision {a.precision!r}: expected fp32, bf16 or fp32,bf16")
    impls = [(f"latent_combo {pr}" if len(precisions) > 1 else "latent_combo", latent_combo_update, pr)
             for pr in precisions]
    if not a.no_reference:
        impls.append(("reference", reference_update, "fp32"))
    rows = []
    for B, T in sizes:
        batch = make_batch(B, T)
        times = {}
        for name, build, precision in impls:
            torch.manual_seed(0)
            plain, n_params = build(cfg)

            def update(b, plain=plain, precision=precision):
                with autocast(torch.device("cpu"), precision):  # as world_model_training runs the update
                    plain(b)

            # The warm-up update runs under the FLOP counter: Adam and clipping add no counted FLOPs, so this
            # is the forward + backward count.
            flops = count_flops(lambda u=update, b=batch: u(b))
            sec = time_it(lambda u=update, b=batch: u(b), iters, warmup=0)
            times[name] = sec
            gflops = flops / sec / 1e9
            rows.append([name, f"{B}x{T}", f"{flops / 1e9:.1f}", f"{sec:.3f}", f"{1 / sec:.3f}", f"{B * T / sec:.0f}",
                         f"{gflops:.1f}", f"{gflops / peak:.0%}", None, None])
            print(f"  done {name} {B}x{T} ({n_params / 1e6:.2f}M params): {sec:.3f} s/update", flush=True)
        fp32 = next((times[n] for n, _, pr in impls if pr == "fp32" and n != "reference"), None)
        for r in rows[-len(impls):]:
            r[-2] = f"{times['reference'] / times[r[0]]:.2f}x" if "reference" in times else "-"
            r[-1] = f"{fp32 / times[r[0]]:.2f}x" if fp32 and r[0] != "reference" else "-"
    print()
    print_table(["impl", "batch", "GFLOP/upd", "s/update", "updates/s", "frames/s", "GFLOP/s", "% peak", "vs ref",
                 "vs fp32"], rows)
    print(f"(peak {peak:.1f} GFLOP/s; GFLOP/upd counted for forward + backward; the Adam step and clipping are "
          f"timed but count no FLOPs)")


if __name__ == "__main__":
    main()
