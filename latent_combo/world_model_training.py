"""World-model stage: ELBO updates on sampled windows, open-loop reports, checkpoints in wm.pt (resumable)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latent_combo import report
from latent_combo.config import Config, to_dict
from latent_combo.data import OfflineDataset
from latent_combo.probe import format_probe, run_probe
from latent_combo.runs import load_checkpoint, save_checkpoint
from latent_combo.utils import (
    FiniteCheck,
    atomic_write_text,
    autocast,
    rng_state,
    seed_everything,
    set_rng_state,
    synced,
)
from latent_combo.world_model import WindowSampler, WorldModel, state_normaliser, to_torch


def build_world_model(cfg: Config, dataset: OfflineDataset, device) -> WorldModel:
    mean, std = state_normaliser(dataset)
    return WorldModel(cfg.wm, cfg.obs, dataset.action_dim, dataset.state_dim, mean, std).to(device)


def train_world_model(cfg: Config, wm: WorldModel, dataset: OfflineDataset, run_dir: Path, writer, device,
                      steps: int | None = None) -> float:
    """ELBO updates on sampled windows, checkpointing every `checkpoint_every` steps; resumes from wm.pt.
    `steps` stops early (tests of resume exactness). Returns the seconds earlier, interrupted invocations
    spent on this stage (saved in wm.pt), so that a resumed run can report its whole wall time."""
    c = cfg.wm
    opt = torch.optim.Adam(wm.parameters(), c.lr, eps=1e-5)
    sampler = np.random.default_rng(cfg.seed)
    report_rng = np.random.default_rng(cfg.seed + 12345)  # its own stream: reports never shift training
    keys = ("image" if cfg.obs == "image" else "state", "action", "reward", "is_first")
    ckpt, start, wall_before = load_checkpoint(run_dir / "wm.pt"), 0, 0.0
    if ckpt is not None:
        wm.load_state_dict(ckpt["model"])
        wall_before = ckpt.get("wall_s", 0.0)
        if ckpt["step"] >= c.steps:
            return wall_before
        opt.load_state_dict(ckpt["opt"])
        set_rng_state(ckpt["rng"])
        sampler.bit_generator.state = ckpt["sampler"]
        report_rng.bit_generator.state = ckpt["report_rng"]
        start = ckpt["step"]
        print(f"world model: resuming at step {start}")
    else:
        seed_everything(cfg.seed)
    stop = min(steps or c.steps, c.steps)

    def save(step):
        save_checkpoint({"model": wm.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state(),
                     "sampler": sampler.bit_generator.state, "report_rng": report_rng.bit_generator.state,
                     "config": to_dict(cfg), "wall_s": wall_before + time.time() - t0}, run_dir / "wm.pt")

    bar = tqdm(range(start + 1, stop + 1), desc="world model", initial=start, total=stop, mininterval=2)
    finite = FiniteCheck("world model", every_step=device.type == "cpu")
    windows = WindowSampler(dataset, keys, device)
    t0 = time.time()
    for step in bar:
        batch = windows.sample(c.batch, c.length, sampler)
        with autocast(device, cfg.precision):
            loss, metrics, _ = wm.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["wm/grad_norm"] = torch.nn.utils.clip_grad_norm_(wm.parameters(), c.grad_clip)
        opt.step()
        metrics["wm/total"] = loss.detach()
        finite.add(metrics, step)
        if step % c.log_every == 0 or step == stop or step % c.checkpoint_every == 0:
            finite.check(step)  # before any save: a non-finite step is never checkpointed
        if step % c.log_every == 0 or step == stop:
            metrics = synced(metrics)
            report.log_scalars(writer, metrics, step)
            report.scalar(writer, "speed/wm_updates_per_s", (step - start) / (time.time() - t0), step)
            bar.set_postfix(obs=f"{metrics['wm/obs']:.1f}", kl=f"{metrics['wm/kl']:.2f}")
        if step % c.image_every == 0 or step == c.steps:
            log_open_loop(wm, dataset, report_rng, writer, step, device)
        if step % c.checkpoint_every == 0 or step == stop:
            save(step)
    return wall_before


@torch.no_grad()
def log_open_loop(wm, dataset, rng, writer, step, device, context: int = 5, horizon: int = 15):
    """Per prior head, a labelled truth / model / error grid (wm/open_loop/head{k}); the open-loop MSE at
    horizons 1, 5, 15 averaged over heads (prior rollouts from filtered states, real actions)."""
    length = min(context + horizon, int(dataset.lengths.max()))
    batch = to_torch(dataset.sample_sequences(4, length, rng), device)
    errs = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for head in range(wm.rssm.ensemble):
            truth, model, err = wm.open_loop(batch, context, head=head)
            errs.append(err)
            grid = (report.open_loop_grid(truth, model, context, head) if wm.obs == "image"
                    else report.state_plot_grid(truth, model))
            writer.add_image(f"wm/open_loop/head{head}", grid, step, dataformats="HWC")
    err = torch.stack(errs).mean(0)
    for h in (1, 5, 15):
        if h <= err.shape[1]:
            report.scalar(writer, f"wm/open_loop_mse_h{h}", err[:, h - 1].mean(), step)


def probe_world_model(cfg: Config, wm: WorldModel, dataset: OfflineDataset, run_dir: Path, writer, device,
                      nonlinear: bool = False) -> dict:
    """The probe figures of the trained world model (latent_combo.probe), cached in probe.json for its
    checkpoint step, logged under probe/ in TensorBoard and printed."""
    path, step = run_dir / "probe.json", load_checkpoint(run_dir / "wm.pt")["step"]
    if path.exists():
        cached = json.loads(path.read_text())
        # A probe.json without state_r2_sample predates the posterior-mean headline: its state_r2 read a sample.
        current = "skipped" in cached["probe"] or "state_r2_sample" in cached["probe"]
        if cached.get("wm_step") == step and current and (not nonlinear or "state_r2_mlp" in cached["probe"]):
            return cached["probe"]
    t0 = time.time()
    result = run_probe(wm, dataset, cfg.env, device, seed=cfg.seed, nonlinear=nonlinear)
    print(format_probe(result) + f"\n(probe: {time.time() - t0:.0f}s)")
    if "skipped" not in result:
        report.log_scalars(writer, {f"probe/{k}": v for k, v in result.items() if isinstance(v, float)}, step)
    atomic_write_text(path, json.dumps({"wm_step": step, "probe": result}, indent=1))
    return result


def load_trained_world_model(run_dir: Path, dataset_path=None, device=None):
    """A run folder's trained world model with its config, the dataset it was trained on (or
    `dataset_path`), the device, the wm.pt step and the run's results.json ({} before the run finished)."""
    from latent_combo.runs import dataset_dir, load_config
    from latent_combo.utils import pick_device

    cfg = load_config(run_dir)
    ckpt = load_checkpoint(run_dir / "wm.pt")
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no wm.pt (train the world model first)")
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    dataset = OfflineDataset(dataset_path or results.get("dataset") or dataset_dir(cfg))
    device = pick_device(device or cfg.device)
    wm = build_world_model(cfg, dataset, device)
    wm.load_state_dict(ckpt["model"])
    return cfg, wm, dataset, device, ckpt["step"], results
