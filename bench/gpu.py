"""Paper scale on one GPU: per-update times at the `paper` preset, and the projected wall time of a full run.

    .venv/bin/python bench/gpu.py [--device cuda] [--iters 20] [--agent-steps 100000] [key=value ...]
    make bench-gpu

Measured on the device, at the paper preset's sizes (overridable with key=value, as for `latent-combo train`):
  world model     one ELBO update on B x T windows gathered on the device (WindowSampler), bf16 autocast
                  under precision=auto, gradient clipping and Adam, as world_model_training does
  agent update    one COMBO critic + actor + temperature step, batch 256 (f real, 1 - f model), 10 + 10
                  penalty actions, as agent_training does
  rollout refresh rollout_batch start states x rollout_length prior steps with the policy (every rollout_every)
  eval episode    one walker-walk episode from pixels: render, filter with the posterior, act (500 steps)
  encode dataset  the posterior over 100k frames (200 episodes of 500 steps), once per world model
Projected full run = wm.steps world-model updates + --agent-steps agent updates (the issue's 100k; the preset
trains agent.steps) + their rollout refreshes + the encoding + evaluations (agent.eval_episodes every
agent.eval_every, final_eval_episodes at the end). Synthetic data: the shapes matter, not the pixels.
Without a CUDA device it says so and exits 0; `--device cpu` runs the same measurements on the CPU (slowly).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import print_table

WALKER_STATE, WALKER_ACTION, EPISODE = 24, 6, 500


def synthetic_dataset(episodes: int, steps: int, seed: int = 0):
    """An in-memory stand-in with OfflineDataset's interface for window sampling and episodes."""
    from latent_combo.data import OfflineDataset

    rng = np.random.default_rng(seed)
    n = episodes * (steps + 1)
    ds = OfflineDataset.__new__(OfflineDataset)
    first = np.zeros(n, bool)
    first[:: steps + 1] = True
    ds.arrays = {"image": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                 "action": rng.uniform(-1, 1, (n, WALKER_ACTION)).astype(np.float32),
                 "reward": rng.uniform(0, 1, n).astype(np.float32), "is_first": first,
                 "discount": np.ones(n, np.float32), "is_terminal": np.zeros(n, bool),
                 "state": rng.normal(size=(n, WALKER_STATE)).astype(np.float32)}
    ds.lengths = np.full(episodes, steps + 1)
    ds.starts = np.arange(episodes) * (steps + 1)
    ds.directory, ds.metadata, ds._valid_starts = "synthetic", None, {}
    ds.action_dim, ds.state_dim = WALKER_ACTION, WALKER_STATE
    return ds


def timed(fn, iters: int, device) -> float:
    """Seconds per call after one untimed warm-up, with the device synchronised around the timed calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--iters", type=int, default=20, help="timed updates per row")
    p.add_argument("--agent-steps", type=int, default=100_000, help="agent updates in the projected run")
    p.add_argument("--eval-steps", type=int, default=EPISODE, help="steps of the timed evaluation episode")
    p.add_argument("overrides", nargs="*", help="config overrides key=value on top of the paper preset")
    a = p.parse_args(argv)
    if a.device is None and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU present, nothing to measure (on a GPU machine: make bench-gpu; "
              "`--device cpu` runs the same measurements here, slowly)")
        return 0
    from latent_combo.agent import Agent
    from latent_combo.config import model_buffer_capacity, parse_overrides, resolve
    from latent_combo.evaluate import run_episode
    from latent_combo.latent import TransitionBuffer, encode_dataset, rollout
    from latent_combo.utils import autocast, configure_device, pick_device
    from latent_combo.world_model import WindowSampler, WorldModel

    device = pick_device(a.device or "cuda")
    configure_device(device)
    cfg = resolve("paper", "walker-walk", parse_overrides(a.overrides))
    c, ca = cfg.wm, cfg.agent
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; precision {cfg.precision}")
    torch.manual_seed(0)
    ds = synthetic_dataset(episodes=max(4, c.batch // 4), steps=EPISODE)
    wm = WorldModel(c, "image", WALKER_ACTION, WALKER_STATE, np.zeros(WALKER_STATE), np.ones(WALKER_STATE)).to(device)
    opt = torch.optim.Adam(wm.parameters(), c.lr, eps=1e-5)
    windows, sampler = WindowSampler(ds, ("image", "action", "reward", "is_first"), device), np.random.default_rng(0)

    def wm_update():
        batch = windows.sample(c.batch, c.length, sampler)
        with autocast(device, cfg.precision):
            loss, _, _ = wm.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), c.grad_clip)
        opt.step()

    rows, sec = [], {}
    sec["wm"] = timed(wm_update, a.iters, device)
    rows.append(["world model update", f"{c.batch}x{c.length}", f"{sec['wm'] * 1e3:.1f}", f"{1 / sec['wm']:.1f}"])

    wm.requires_grad_(False)
    feat = wm.rssm.feat_dim
    agent = Agent(ca, "combo", feat, WALKER_ACTION).to(device)
    real = TransitionBuffer(20_000, feat, WALKER_ACTION, device)
    real.add({"state": torch.randn(20_000, feat), "action": torch.rand(20_000, WALKER_ACTION) * 2 - 1,
              "reward": torch.rand(20_000), "next_state": torch.randn(20_000, feat), "discount": torch.ones(20_000)})
    model_buf = TransitionBuffer(model_buffer_capacity(ca), feat, WALKER_ACTION, device)
    n_real = int(round(ca.batch * ca.real_ratio))

    def refresh():
        batch, _ = rollout(wm, agent.actor, real.sample(ca.rollout_batch)["state"], ca.rollout_length)
        model_buf.add(batch)

    sec["rollout"] = timed(refresh, max(2, a.iters // 5), device)
    rows.append(["rollout refresh", f"{ca.rollout_batch}x{ca.rollout_length}", f"{sec['rollout'] * 1e3:.1f}",
                 f"{1 / sec['rollout']:.1f}"])
    sec["agent"] = timed(lambda: agent.update(real.sample(n_real), model_buf.sample(ca.batch - n_real)),
                         a.iters * 5, device)
    rows.append(["agent update", f"{ca.batch}, {ca.penalty_actions}+{ca.penalty_actions}",
                 f"{sec['agent'] * 1e3:.2f}", f"{1 / sec['agent']:.1f}"])

    from latent_combo.envs import check_rendering, make_env

    check_rendering()
    env = make_env("walker-walk")
    env.max_steps = a.eval_steps
    t0 = time.perf_counter()
    run_episode(env, wm, agent.actor, device, seed=0)
    sec["eval"] = (time.perf_counter() - t0) * EPISODE / a.eval_steps
    rows.append(["eval episode", f"{EPISODE} steps", f"{sec['eval'] * 1e3:.0f}", f"{1 / sec['eval']:.2f}"])

    small = synthetic_dataset(episodes=2, steps=EPISODE)
    sec["encode"] = timed(lambda: encode_dataset(wm, small, device), 1, device) * 100  # 100 x 1000 frames
    rows.append(["encode dataset", "100k frames", f"{sec['encode'] * 1e3:.0f}", "-"])

    print()
    print_table(["stage", "size", "ms", "per s"], rows)
    refreshes = a.agent_steps // ca.rollout_every
    evals = (a.agent_steps // ca.eval_every) * ca.eval_episodes + cfg.final_eval_episodes
    parts = {"world model": c.steps * sec["wm"], "encode": sec["encode"], "agent": a.agent_steps * sec["agent"],
             "rollouts": refreshes * sec["rollout"], "evaluation": evals * sec["eval"]}
    total = sum(parts.values())
    print(f"\nprojected walker-walk run ({c.steps} world-model + {a.agent_steps} agent updates, {evals} eval "
          f"episodes): {total / 60:.1f} min  (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in parts.items()) + ")")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
