"""Collection throughput (frames/s) per env with 1 and 2 worker processes, against the render ceiling.

    .venv/bin/python bench/collect.py [--steps N] [--episodes 2] [--frames 1500]

ceiling: each process only renders the 64x64 frame again and again (no physics, no policy, no saving).
collect: each process runs the real collection path (data_collection.collect._collect_one: policy, physics,
render, episode file written with compression), on full-length episodes unless --steps is given.
Walker uses a random policy (works without the shipped SAC checkpoints), sawyer-door the scripted
medium policy.
Every process builds its env first and starts timing at a barrier, so process start-up is not counted.
Then a per-frame breakdown (render / env step / policy / file write, timed apart in one process; walker
with the shipped medium SAC actor when present) shows where the gap to the ceiling goes.
Printed, not asserted. Other load on the machine (see the load average printed) lowers both columns.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _render_fn(env):
    if hasattr(env, "_camera"):  # walker: the env's own reused dm_control Camera
        return env._camera().render
    return env._env.render  # sawyer: Meta-World's MuJoCo renderer


def _ceiling_proc(env_id, frames, barrier, queue):
    from latent_combo.envs import make_env

    env = make_env(env_id, render=True)
    env.reset(seed=0)
    render = _render_fn(env)
    render()
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(frames):
        render()
    queue.put((frames, time.perf_counter() - t0))


def _collect_proc(env_id, pols, parts, out, steps, indices, barrier, queue):
    from data_collection import collect as C

    C._init_worker(env_id, pols, parts, out, 0, steps)
    C._WORKER["env"].reset(seed=0)
    barrier.wait()
    t0 = time.perf_counter()
    frames = sum(C._collect_one(i)["steps"] + 1 for i in indices)
    queue.put((frames, time.perf_counter() - t0))


def _breakdown(env_id, pol, frames):
    """ms per frame of each part of the collection path, timed apart in this process: render only, env
    step without rendering (physics, reward, state), policy forward, episode file write."""
    import numpy as np

    from data_collection.collect import run_episode
    from latent_combo.data import save_episode
    from latent_combo.envs import make_env

    env, bare = make_env(env_id, render=True), make_env(env_id, render=False)
    obs, render = env.reset(seed=0)[0], _render_fn(env)
    bare.reset(seed=0)
    rng, action = np.random.default_rng(0), np.zeros(env.action_dim, np.float32)

    def per_frame(fn, n=frames):
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e3

    def step():
        if bare.step(action)[3]:
            bare.reset(seed=0)

    ep = run_episode(env, pol, 0, rng)
    with tempfile.TemporaryDirectory() as d:
        save = per_frame(lambda: save_episode(Path(d) / "ep.npz", ep), 3) / len(ep["reward"])
    return {"render": per_frame(render), "step": per_frame(step), "policy": per_frame(lambda: pol(obs, rng)),
            "save": save}


def _run(target, args_per_proc):
    ctx = mp.get_context("spawn")
    procs = len(args_per_proc)
    barrier, queue = ctx.Barrier(procs + 1), ctx.Queue()
    ps = [ctx.Process(target=target, args=(*args, barrier, queue)) for args in args_per_proc]
    for p in ps:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    results = [queue.get() for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    return sum(f for f, _ in results) / wall


def main(argv=None):
    from data_collection import policies as P

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="agent steps per episode (default: full length)")
    p.add_argument("--episodes", type=int, default=2, help="episodes per worker")
    p.add_argument("--frames", type=int, default=1500,
                   help="frames per process for the ceiling (short runs are noisy on a shared VM)")
    a = p.parse_args(argv)
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'env':<12} {'workers':>7} {'ceiling f/s':>12} {'collect f/s':>12} {'of ceiling':>10}")
    for env_id in ("walker-walk", "sawyer-door"):
        pol = P.RandomPolicy(6) if env_id == "walker-walk" else P.behaviour_policy(env_id, "medium")
        for workers in (1, 2):
            ceiling = _run(_ceiling_proc, [(env_id, a.frames)] * workers)
            n = workers * a.episodes
            with tempfile.TemporaryDirectory() as out:
                rate = _run(_collect_proc, [(env_id, {"b": pol}, ["b"] * n, out, a.steps, list(range(k, n, workers)))
                                            for k in range(workers)])
            print(f"{env_id:<12} {workers:>7} {ceiling:>12.1f} {rate:>12.1f} {rate / ceiling:>10.0%}", flush=True)
    print("\nwhere a frame's time goes, one process (ms per frame):")
    print(f"{'env':<12} {'render':>7} {'step':>7} {'policy':>7} {'save':>7} {'render share':>13}")
    for env_id in ("walker-walk", "sawyer-door"):
        pol = P.behaviour_policy(env_id, "medium") if env_id != "walker-walk" or _shipped() else P.RandomPolicy(6)
        b = _breakdown(env_id, pol, a.frames // 3)
        share = b["render"] / sum(b.values())
        print(f"{env_id:<12} {b['render']:>7.2f} {b['step']:>7.2f} {b['policy']:>7.2f} {b['save']:>7.2f} "
              f"{share:>13.0%}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _shipped() -> bool:
    from data_collection.policies import CHECKPOINT_DIR

    return (Path(CHECKPOINT_DIR) / "walker-walk-medium.pt").exists()


if __name__ == "__main__":
    main()
