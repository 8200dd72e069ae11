"""Dreamer practice on the pixel world model, one change at a time at equal wall time, read by the probe.

    .venv/bin/python bench/world_model_screen.py --dataset medium-replay --seeds 0 1 --logdir runs/s38 \
        [--variants base,gru_norm,...] [--preset cpu] [--steps 700] [--time-only]

Each variant is a set of config overrides (VARIANTS below; `render` swaps the dataset for one collected with
MuJoCo's default rendering, `latent-combo collect --render default --out data/ENV/FLAVOUR-msaa`). Its world model is
trained with `latent-combo train --world-model-only` (the command is printed; a finished run is reused), for the
baseline's updates scaled by the baseline's time per update over the variant's, so that every variant spends the
baseline's update time, or the multiple of it VARIANTS gives (timed here first: 60 updates of the training loop on
the dataset, one variant after another with every core, cached in LOGDIR/timings.json). Then one table of the
probe's figures (the posterior mean's state R², per group, open-loop R², separability) per variant, mean over the
seeds, with the minutes its updates take (the timing x the updates).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import machine_line, print_table, set_threads

ROOT = Path(__file__).resolve().parents[1]

# name: (overrides, dataset suffix, share of the baseline's update time). References: dreamerv2/common/nets.py (GRU
# with norm), dreamerv2 configs.yaml dmc_vision (KL balance 0.8, 1 free nat on the batch mean), dreamerv3/nets.py
# (split KL dyn 0.5 / rep 0.1 with 1 free nat per step; LayerNorm in every conv and linear), V-D4RL's frames
# (MuJoCo's default rendering).
VARIANTS = {
    "base": ({}, "", 1.0),
    "gru_norm": ({"wm.gru_norm": "true"}, "", 1.0),
    "norm_layer": ({"wm.norm": "layer"}, "", 1.0),
    "kl_dv2": ({"wm.kl_balance": "0.8", "wm.kl_free": "1.0", "wm.kl_free_mode": "batch", "wm.kl_scale": "1.0"}, "",
               1.0),
    "kl_dv3": ({"wm.kl_dyn": "0.5", "wm.kl_rep": "0.1", "wm.kl_free": "1.0", "wm.kl_free_mode": "step"}, "", 1.0),
    "decode_half": ({"wm.decode_share": "0.5"}, "", 1.0),
    "bf16": ({"precision": "bf16"}, "", 1.0),
    "render": ({}, "-msaa", 1.0),
    # The changes the one-at-a-time rows support, together, at the baseline's time ...
    "together": ({"precision": "bf16", "wm.decode_share": "0.5", "wm.gru_norm": "true", "wm.norm": "layer"}, "", 1.0),
    # ... and with the larger state and learning rate the earlier screen supported (docs/world-model.md), at twice
    # the baseline's update time: the candidate for a cpu preset whose world-model stage fits in 6 minutes.
    "together_big": ({"precision": "bf16", "wm.decode_share": "0.5", "wm.gru_norm": "true", "wm.norm": "layer",
                      "wm.deter": "256", "wm.stoch": "64", "wm.hidden": "256", "wm.lr": "0.002"}, "", 2.0),
}


# Every variant runs on top of the cpu preset's world model as it was before the screen (fp32, LOMPO's GRU, no
# normalisation, every frame decoded, 128 / 32 / 128 at lr 6e-4, 700 updates), whatever configs/cpu.yaml says now.
BASE = {"precision": "fp32", "wm.deter": "128", "wm.stoch": "32", "wm.hidden": "128", "wm.lr": "0.0006",
        "wm.gru_norm": "false", "wm.norm": "none", "wm.decode_share": "1.0"}
BASE_STEPS = 700


def seconds_per_update(preset: str, env: str, dataset, overrides: dict, steps: int = 60) -> float:
    """One world-model update's wall time in the training loop itself (latent_combo.world_model_training: window
    sampling, the update, its checks and its checkpoint) on this dataset, under these overrides: `steps` updates
    from scratch in a scratch folder, timed whole. Synthetic timings of the update alone missed the loop's share:
    bf16 and half decoding read 1.5x and 1.6x faster there, 1.17x and 1.32x in training."""
    import tempfile

    from torch.utils.tensorboard import SummaryWriter

    from latent_combo.config import parse_overrides, resolve
    from latent_combo.utils import pick_device, seed_everything
    from latent_combo.world_model_training import build_world_model, train_world_model

    cfg = resolve(preset, env, overrides=parse_overrides([f"{k}={v}" for k, v in {**BASE, **overrides}.items()]))
    device = pick_device(cfg.device)
    seed_everything(0)
    wm = build_world_model(cfg, dataset, device)
    with tempfile.TemporaryDirectory() as tmp, SummaryWriter(tmp) as writer:
        t0 = time.perf_counter()
        train_world_model(cfg, wm, dataset, Path(tmp), writer, device, steps=steps)
        return (time.perf_counter() - t0) / steps


def run_dir(logdir: Path, name: str, env: str, dataset: str, preset: str, seed: int) -> Path:
    return logdir / name / env / dataset / f"combo-image-{preset}-s{seed}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="walker-walk")
    p.add_argument("--dataset", default="medium-replay")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=BASE_STEPS, help="the baseline's updates")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--logdir", default="runs/s38")
    p.add_argument("--time-only", action="store_true", help="print the timings and the updates, train nothing")
    a = p.parse_args(argv)
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")

    base_steps = a.steps
    logdir = Path(a.logdir)
    set_threads(0)
    print(machine_line())

    # Timings are cached so that a resumed screen trains each variant for the same number of updates.
    timing_path = logdir / "timings.json"
    timings = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    from latent_combo.data import OfflineDataset

    datasets = {}
    for name in ["base", *names]:
        if name not in timings:
            suffix = VARIANTS[name][1]
            if suffix not in datasets:
                datasets[suffix] = OfflineDataset(ROOT / "data" / a.env / (a.dataset + suffix))
            timings[name] = seconds_per_update(a.preset, a.env, datasets[suffix], VARIANTS[name][0])
            print(f"  {name}: {timings[name]:.3f} s/update", flush=True)
    logdir.mkdir(parents=True, exist_ok=True)
    timing_path.write_text(json.dumps(timings, indent=1))
    steps = {}
    for n in names:
        share = VARIANTS[n][2]
        steps[n] = int(round(share * base_steps * timings["base"] / timings[n]))
        # Changes that cost what the baseline costs up to timing noise keep its updates.
        if abs(steps[n] - share * base_steps) / (share * base_steps) < 0.05:
            steps[n] = int(round(share * base_steps))
    if a.time_only:
        print_table(["variant", "s/update", "updates"], [[n, f"{timings[n]:.3f}", steps[n]] for n in names])
        return

    for name in names:
        overrides, suffix, _ = VARIANTS[name]
        for seed in a.seeds:
            out = run_dir(logdir, name, a.env, a.dataset + suffix, a.preset, seed)
            if (out / "probe.json").exists():
                continue
            cmd = [sys.executable, "-m", "latent_combo.cli", "train", "--env", a.env, "--dataset",
                   str(ROOT / "data" / a.env / (a.dataset + suffix)) if suffix else a.dataset,
                   "--preset", a.preset, "--seed", str(seed), "--world-model-only", "--logdir", str(logdir / name),
                   f"wm.steps={steps[name]}", *(f"{k}={v}" for k, v in {**BASE, **overrides}.items())]
            print("$", shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)

    rows = []
    for name in names:
        overrides, suffix, _ = VARIANTS[name]
        figs = []
        for seed in a.seeds:
            out = run_dir(logdir, name, a.env, a.dataset + suffix, a.preset, seed)
            found = json.loads((out / "probe.json").read_text())
            probe, updates = found["probe"], found["wm_step"]
            figs.append([probe["state_r2"], probe["state_r2_positions"], probe["state_r2_velocities"],
                         probe.get("state_r2_sample", float("nan")), probe["open_loop_r2_h1"],
                         probe["open_loop_r2_h5"], probe["separability"], timings[name] * updates / 60, updates])
        figs = np.array(figs)
        mean = figs.mean(0)
        per_seed = " / ".join(f"{v:.3f}" for v in figs[:, 0])
        label = " ".join(f"{k}={v}" for k, v in overrides.items()) or ("default render" if suffix else "-")
        updates = " / ".join(str(int(v)) for v in sorted(set(figs[:, 8])))  # as trained (probe.json's wm_step)
        rows.append([name, label, updates, per_seed, *(f"{v:.3f}" for v in mean[:7]), f"{mean[7]:.1f}"])
    print()
    print_table(["variant", "overrides", "updates", "state R² per seed", "state R²", "positions", "velocities",
                 "R² (z sample)", "open-loop h1", "h5", "separability", "update min"], rows)
    print(f"(mean over seeds {' '.join(map(str, a.seeds))}; {a.env} {a.dataset}, preset {a.preset}, "
          f"{base_steps} baseline updates; the probe's held-out episodes)")


if __name__ == "__main__":
    main()
