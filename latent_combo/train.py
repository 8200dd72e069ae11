"""`latent-combo train`: world model, then latent transitions, then the agent, then evaluation.

A run folder holds config.yaml, wm.pt, latents.pt, agent.pt, TensorBoard events and results.json.
Rerunning the same command resumes from the last checkpoint of whichever stage was in flight.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from latent_combo import report
from latent_combo.config import Config, from_dict, to_dict
from latent_combo.data import OfflineDataset
from latent_combo.utils import atomic_save, atomic_write_text, rng_state, seed_everything, set_rng_state
from latent_combo.world_model import WorldModel, state_normaliser, to_torch

FLAVOURS = ("medium", "medium-replay", "medium-expert", "expert")


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(metrics: dict, stage: str, step: int) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"{stage}: non-finite {', '.join(bad)} at step {step}; stopping. The last good "
                            "checkpoint in the run folder is intact (lower the learning rate or check the data).")


# ----- datasets and run folders ---------------------------------------------------------------------

def dataset_dir(cfg: Config) -> Path:
    """A flavour name resolves to data/ENV/FLAVOUR when that dataset exists (e.g. from `make collect-walker`),
    else to a small one, data/ENV/FLAVOUR-Nep with N = cfg.default_episodes, built on the fly if missing
    (a separate folder, so a later full collection is not blocked by it). Anything else is a folder path."""
    if cfg.dataset in FLAVOURS:
        full = Path("data") / cfg.env / cfg.dataset
        if (full / "metadata.json").exists():
            return full
        small = Path("data") / cfg.env / f"{cfg.dataset}-{cfg.default_episodes}ep"
        if not (small / "metadata.json").exists():
            from data_collection.collect import ensure_dataset

            print(f"no dataset at {full}: building a small one, {cfg.default_episodes} episodes, in {small}")
            ensure_dataset(cfg.env, cfg.dataset, cfg.default_episodes, out=small, seed=0)
        return small
    path = Path(cfg.dataset)
    if not path.is_dir():
        raise FileNotFoundError(f"--dataset {cfg.dataset!r}: neither a flavour ({', '.join(FLAVOURS)}) "
                                "nor an existing folder")
    return path


def run_dir_for(cfg: Config, data_path: Path) -> Path:
    """Named after the resolved dataset folder, so a small on-the-fly dataset and the full collection of the
    same flavour never share a run folder."""
    return Path(cfg.logdir) / cfg.env / Path(data_path).name / f"{cfg.algo}-{cfg.obs}-{cfg.preset}-s{cfg.seed}"


def save_config(cfg: Config, run_dir: Path) -> None:
    """Resolved config saved with the run; a resumed run must have been started with the same one,
    except for where it runs (`threads`, `device`), which may change between sessions."""
    path = run_dir / "config.yaml"
    if path.exists():
        where = {"threads": cfg.threads, "device": cfg.device}
        old = dataclasses.replace(from_dict(yaml.safe_load(path.read_text())), **where)
        if old != cfg:
            diff = [k for k, v in to_dict(cfg).items() if to_dict(old).get(k) != v]
            raise ValueError(f"{path}: this run folder was started with a different config (differs in "
                             f"{diff}); use --fresh to restart it or --logdir for a new folder")
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_checkpoint(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


# ----- stage 1: world model ---------------------------------------------------------------------------

def build_world_model(cfg: Config, dataset: OfflineDataset, device) -> WorldModel:
    mean, std = state_normaliser(dataset)
    return WorldModel(cfg.wm, cfg.obs, dataset.action_dim, dataset.state_dim, mean, std).to(device)


def train_world_model(cfg: Config, wm: WorldModel, dataset: OfflineDataset, run_dir: Path, writer, device,
                      steps: int | None = None) -> None:
    """ELBO updates on sampled windows, checkpointing every `checkpoint_every` steps; resumes from wm.pt.
    `steps` stops early (tests of resume exactness)."""
    c = cfg.wm
    opt = torch.optim.Adam(wm.parameters(), c.lr, eps=1e-5)
    sampler = np.random.default_rng(cfg.seed)
    report_rng = np.random.default_rng(cfg.seed + 12345)  # its own stream: reports never shift training
    keys = ("image" if cfg.obs == "image" else "state", "action", "reward", "is_first")
    ckpt, start = load_checkpoint(run_dir / "wm.pt"), 0
    if ckpt is not None:
        wm.load_state_dict(ckpt["model"])
        if ckpt["step"] >= c.steps:
            return
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
        atomic_save({"model": wm.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state(),
                     "sampler": sampler.bit_generator.state, "report_rng": report_rng.bit_generator.state,
                     "config": to_dict(cfg)}, run_dir / "wm.pt")

    bar = tqdm(range(start + 1, stop + 1), desc="world model", initial=start, total=stop, mininterval=2)
    t0 = time.time()
    for step in bar:
        batch = to_torch(dataset.sample_sequences(c.batch, c.length, sampler, keys), device)
        loss, metrics, _ = wm.loss(batch)
        check_finite({**metrics, "wm/total": loss.item()}, "world model", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["wm/grad_norm"] = torch.nn.utils.clip_grad_norm_(wm.parameters(), c.grad_clip).item()
        opt.step()
        if step % c.log_every == 0 or step == stop:
            metrics["wm/updates_per_s"] = (step - start) / (time.time() - t0)
            report.log_scalars(writer, {k: v for k, v in metrics.items() if "updates_per_s" not in k}, step, "loss/")
            writer.add_scalar("train/wm_updates_per_s", metrics["wm/updates_per_s"], step)
            bar.set_postfix(obs=f"{metrics['wm/obs']:.1f}", kl=f"{metrics['wm/kl']:.2f}")
        if step % c.image_every == 0 or step == c.steps:
            log_open_loop(wm, dataset, report_rng, writer, step, device)
        if step % c.checkpoint_every == 0 or step == stop:
            save(step)


@torch.no_grad()
def log_open_loop(wm, dataset, rng, writer, step, device, context: int = 5, horizon: int = 15):
    """Truth / model / error grid and open-loop MSE at horizons 1, 5, 15 (prior rollouts, real actions)."""
    length = min(context + horizon, int(dataset.lengths.max()))
    batch = to_torch(dataset.sample_sequences(4, length, rng), device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        truth, model, err = wm.open_loop(batch, context)
    for h in (1, 5, 15):
        if h <= err.shape[1]:
            writer.add_scalar(f"loss/wm/open_loop_mse_h{h}", err[:, h - 1].mean().item(), step)
    grid = report.open_loop_grid(truth, model) if wm.obs == "image" else report.state_plot_grid(truth, model)
    writer.add_image("wm/open_loop_truth_model_error", grid, step, dataformats="HWC")
