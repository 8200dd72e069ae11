"""Reference rows from a trusted library: d3rlpy's TD3+BC, CQL, IQL and BC on the dataset's raw states.

    python bench/d3rlpy_reference.py --env walker-walk --dataset data/walker-walk/medium-replay \
        --algos td3bc iql bc cql --seeds 2 3 4 --steps 20000 --episodes 50 [--workers 2] [--logdir runs/d3rlpy]

Answers one question about the project's state-mode tables: is our agent behind a well-known implementation on our
own data, or is the data the limit? Each run trains on the proprioceptive states the dataset stores beside its frames
(no world model), with the hyperparameters of d3rlpy's own reproduction scripts (`reproductions/offline/*.py`), for
the same number of updates as the project's agents, and is evaluated on the same episodes: the deterministic policy,
environment seeds 1_000_000 + i as pipeline.py's final evaluation, score = return / 10. Finished runs are read from
their results.json, so an interrupted benchmark resumes. `bench/quality.py --reference ALGO ...` prints these rows
under its own table.

d3rlpy comes with `make setup`: its 2.8.1 wheel pins gymnasium 1.0.0 where Meta-World needs >= 1.1, so it is
installed without its dependencies, which the `reference` extra lists. Nothing in latent_combo imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

D3RLPY_VERSION = "2.8.1"
ALGOS = ("td3bc", "cql", "iql", "bc")
NAMES = {"td3bc": "TD3+BC", "cql": "CQL", "iql": "IQL", "bc": "BC"}
FINAL_EVAL_SEED = 1_000_000  # pipeline.py's final evaluation: the same episodes for every row


def require_d3rlpy():
    try:
        import d3rlpy
    except ImportError:
        raise SystemExit("d3rlpy is not installed: run `make setup` (it installs d3rlpy 2.8.1 and its "
                         "dependencies into .venv)") from None
    if d3rlpy.__version__ != D3RLPY_VERSION:
        raise SystemExit(f"d3rlpy {d3rlpy.__version__} installed, the reference rows are pinned to {D3RLPY_VERSION}: "
                         "`pip install --no-deps d3rlpy==2.8.1` into .venv")
    return d3rlpy


def quiet_d3rlpy() -> None:
    """d3rlpy logs every build step and its whole config through structlog: keep warnings only."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def mdp_dataset(data_path: str | Path):
    """The dataset's episodes as a d3rlpy MDPDataset on raw states. Our step t holds the observation at t and the
    action and reward that led to it (Dreamer's layout); d3rlpy's row t holds the observation and the action taken
    from it: so row t pairs state[t] with action[t + 1] and reward[t + 1]. An episode's last row has no action
    (zeros) and ends it, as a time-out unless the episode ended in a true terminal; d3rlpy never samples it."""
    d3rlpy = require_d3rlpy()
    from latent_combo.data import OfflineDataset

    data = OfflineDataset(data_path)
    obs, actions, rewards, terminals, timeouts = [], [], [], [], []
    for i in range(len(data)):
        ep = data.episode(i)
        if "state" not in ep:
            raise SystemExit(f"{data_path}: episode {i} has no 'state' array; the d3rlpy rows need the raw states "
                             "that `latent-combo collect` stores beside the frames")
        n = len(ep["reward"])
        obs.append(ep["state"].astype(np.float32))
        actions.append(np.concatenate([ep["action"][1:], np.zeros_like(ep["action"][:1])]).astype(np.float32))
        rewards.append(np.concatenate([ep["reward"][1:], [0.0]]).astype(np.float32))
        end = np.zeros(n, np.float32)
        end[-1] = 1.0
        terminal = bool(ep["is_terminal"][-1])
        terminals.append(end if terminal else np.zeros(n, np.float32))
        timeouts.append(np.zeros(n, np.float32) if terminal else end)
    cat = np.concatenate
    return d3rlpy.dataset.MDPDataset(cat(obs), cat(actions), cat(rewards), cat(terminals), cat(timeouts),
                                     action_space=d3rlpy.ActionSpace.CONTINUOUS)


def make_algo(name: str, steps: int):
    """The algorithm with its reproduction script's settings (d3rlpy's reproductions/offline/<algo>.py)."""
    d3rlpy = require_d3rlpy()
    scaler = d3rlpy.preprocessing.StandardObservationScaler
    if name == "td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256,
                                            target_smoothing_sigma=0.2, target_smoothing_clip=0.5, alpha=2.5,
                                            update_actor_interval=2, observation_scaler=scaler())
    if name == "cql":
        # Fixed conservative weight (alpha_learning_rate 0), 3 x 256 networks, as the reproduction.
        encoder = d3rlpy.models.VectorEncoderFactory([256, 256, 256])
        return d3rlpy.algos.CQLConfig(actor_encoder_factory=encoder, critic_encoder_factory=encoder,
                                      alpha_learning_rate=0.0, batch_size=256, observation_scaler=scaler())
    if name == "iql":
        return d3rlpy.algos.IQLConfig(actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256,
                                      weight_temp=3.0, max_weight=100.0, expectile=0.7,
                                      reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
                                      observation_scaler=scaler())
    if name == "bc":
        return d3rlpy.algos.BCConfig(batch_size=256, observation_scaler=scaler())
    raise ValueError(f"d3rlpy reference algo {name!r}: expected one of {', '.join(ALGOS)}")


def evaluate(algo, env_id: str, episodes: int) -> list[float]:
    """Returns of the deterministic policy on the final evaluation's episodes, acting on raw states."""
    from latent_combo.envs import make_env

    env = make_env(env_id, render=False)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=FINAL_EVAL_SEED + ep)
        ret, done = 0.0, False
        while not done:
            action = algo.predict(obs["state"][None].astype(np.float32))[0]
            obs, reward, term, trunc, _ = env.step(action)
            ret, done = ret + reward, term or trunc
        returns.append(float(ret))
    env.close()
    return returns


def run(name: str, data_path: str, env_id: str, steps: int, seed: int, episodes: int, logdir: str,
        threads: int = 1) -> dict:
    """Train one reference algorithm on one seed and evaluate it; cached in LOGDIR/<algo>-s<seed>/results.json."""
    out = Path(logdir) / f"{name}-s{seed}"
    done = out / "results.json"
    if done.exists():
        cached = json.loads(done.read_text())
        # The same folder named another way (relative or absolute) is the same data: no retraining.
        same_data = Path(cached["dataset"]).resolve() == Path(data_path).resolve()
        if cached["steps"] == steps and cached["eval_episodes"] == episodes and same_data:
            return cached
    import torch

    d3rlpy = require_d3rlpy()
    from latent_combo.evaluate import ci95

    torch.set_num_threads(threads)
    quiet_d3rlpy()
    d3rlpy.seed(seed)
    dataset = mdp_dataset(data_path)
    algo = make_algo(name, steps).create(device="cpu:0")
    t0 = time.time()
    algo.fit(dataset, n_steps=steps, n_steps_per_epoch=min(steps, 5000), show_progress=False,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory(), save_interval=10**9)
    train_s = time.time() - t0
    returns = evaluate(algo, env_id, episodes)
    result = {"algo": name, "library": f"d3rlpy {D3RLPY_VERSION}", "seed": seed, "steps": steps,
              "dataset": str(data_path), "env": env_id, "eval_episodes": episodes, "eval_returns": returns,
              "eval_normalized_score": float(np.mean(returns)) / 10, "eval_normalized_score_ci95": ci95(returns) / 10,
              "updates_per_s": steps / train_s, "wall_time_s": time.time() - t0}
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    print(f"d3rlpy {NAMES[name]} seed {seed}: {result['eval_normalized_score']:.1f} "
          f"±{result['eval_normalized_score_ci95']:.1f} ({steps} updates, {result['updates_per_s']:.0f}/s)", flush=True)
    return result


def run_all(algos, seeds, data_path: str, env_id: str, steps: int, episodes: int, logdir: str,
            workers: int = 1) -> list[dict]:
    """Every (algo, seed), `workers` at a time with one thread each."""
    jobs = [(a, str(data_path), env_id, steps, s, episodes, logdir) for a in algos for s in seeds]
    if workers <= 1:
        return [run(*j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(run, *zip(*jobs)))


def table(results: list[dict]) -> list[dict]:
    """One row per algorithm: mean ± 95% interval over seeds of the per-seed scores."""
    from latent_combo.evaluate import ci95

    rows = []
    for name in dict.fromkeys(r["algo"] for r in results):
        mine = sorted((r for r in results if r["algo"] == name), key=lambda r: r["seed"])
        scores = [r["eval_normalized_score"] for r in mine]
        rows.append({"algo": f"d3rlpy {NAMES[name]}", "mean": float(np.mean(scores)), "ci95": ci95(scores),
                     "scores": scores, "seeds": [r["seed"] for r in mine], "steps": mine[0]["steps"],
                     "updates_per_s": float(np.mean([r["updates_per_s"] for r in mine])),
                     "wall_s": float(np.mean([r["wall_time_s"] for r in mine]))})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"reference rows: d3rlpy {D3RLPY_VERSION} on the dataset's raw states (no world model), "
          f"{rows[0]['steps'] if rows else 0} updates, the same evaluation episodes")
    for t in rows:
        print(f"{t['algo']:<14} {t['mean']:>8.1f} ±{t['ci95']:<7.1f} {' '.join(f'{s:.1f}' for s in t['scores']):<24} "
              f"{t['updates_per_s']:>6.0f} updates/s {t['wall_s']:>6.0f}s")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="walker-walk")
    p.add_argument("--dataset", required=True, help="a dataset folder with raw states (data/ENV/FLAVOUR)")
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=20_000, help="updates per run (match the agents')")
    p.add_argument("--episodes", type=int, default=50, help="final evaluation episodes")
    p.add_argument("--workers", type=int, default=1, help="runs at once, one thread each")
    p.add_argument("--logdir", default="runs/d3rlpy")
    a = p.parse_args(argv)
    rows = table(run_all(a.algos, a.seeds, a.dataset, a.env, a.steps, a.episodes, a.logdir, a.workers))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
