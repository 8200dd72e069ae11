"""Pick the medium and expert policies from a SAC ladder and ship them (plus the medium-replay experience).

    python -m data_collection.ship --env walker-walk [--ladder runs/behaviour/walker-walk-replay]
        [--expert-ladder runs/behaviour/walker-walk]

Reads `ladder.json` (checkpoints with their evaluation returns) and `experience.npz` (every training
episode as reset seed + actions) written by data_collection/sac.py, and writes to
data_collection/checkpoints/:
- ENV-medium.pt: the checkpoint whose return is closest to 500, within [400, 600] (else an error). With
  `--measure-episodes N` (the default, 20) that return is re-measured the way the collector acts
  (stochastic actions, N episodes) for every checkpoint whose training eval is in [300, 700]: the 5-episode
  deterministic eval of training overstates it (a checkpoint read 511 there and 396 ± 73 measured);
- ENV-expert.pt: the checkpoint with the best eval return (a warning below 900);
- ENV-replay.npz: the training episodes that ended at or before the last checkpoint of the in-band stretch
  holding the medium pick (`replay_endpoint`), in order
  (seeds, actions float32, returns, end_steps): medium-replay is rebuilt by replaying them.
Each .pt holds only the actor (state_dict, hidden, env, step, eval_return, eval_success).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np

from data_collection.policies import CHECKPOINT_DIR

MEDIUM_TARGET, MEDIUM_BAND, EXPERT_MIN = 500.0, (400.0, 600.0), 900.0
# Checkpoints whose training eval is this far from the band are not worth re-measuring.
CANDIDATE_BAND = (300.0, 700.0)


def _in_band(entry: dict, key: str) -> bool:
    lo, hi = MEDIUM_BAND
    return entry.get(key) is not None and lo <= entry[key] <= hi


def pick_medium(ladder: list[dict], key: str = "eval_return") -> dict:
    """The checkpoint whose `key` return is closest to 500 within [400, 600]."""
    if not ladder:
        raise ValueError("the ladder is empty: train longer (make train-behaviour)")
    band = [e for e in ladder if _in_band(e, key)]
    if not band:
        lo, hi = MEDIUM_BAND
        seen = ", ".join(f"{e['step']}: {e[key]:.0f}" for e in ladder if e.get(key) is not None)
        raise ValueError(f"no checkpoint has a {key} in [{lo:.0f}, {hi:.0f}] for the medium policy "
                         f"(step: return = {seen or 'none measured'}); evaluate more often (--eval-every) "
                         "or retrain")
    return min(band, key=lambda e: (abs(e[key] - MEDIUM_TARGET), e["step"]))


def replay_endpoint(ladder: list[dict], medium: dict, key: str = "eval_return") -> int:
    """The env step where medium-replay's experience ends: the last checkpoint of the stretch of
    checkpoints in the medium band that contains the medium pick (the learner is still at medium level
    there), so that the replay holds as much medium-level training as the run has."""
    ordered = sorted(ladder, key=lambda e: e["step"])
    i = next(k for k, e in enumerate(ordered) if e["step"] == medium["step"])
    while i + 1 < len(ordered) and _in_band(ordered[i + 1], key):
        i += 1
    return int(ordered[i]["step"])


def behaviour_return(checkpoint: Path, env_id: str, episodes: int, seed: int = 9) -> float:
    """Mean return of a checkpoint acting as the collector does: stochastic actions, state-only env."""
    from data_collection.policies import SACPolicy
    from latent_combo.envs import make_env

    policy, env, returns = SACPolicy(checkpoint), make_env(env_id, render=False), []
    for i in range(episodes):
        # Seeds apart from the collector's (seed * 1_000_000 + i with small dataset seeds).
        rng, obs, done, ret = np.random.default_rng([seed, i]), env.reset(seed=seed * 1_000_000 + i)[0], False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs, rng))
            ret, done = ret + r, term or trunc
        returns.append(ret)
    return float(np.mean(returns))


def measure_candidates(ladder_dir: Path, ladder: list[dict], env_id: str, episodes: int) -> list[dict]:
    """The ladder with `behaviour_return` added to each checkpoint whose training eval is in
    CANDIDATE_BAND (the others cannot plausibly be medium and are left unmeasured)."""
    from tqdm import tqdm

    lo, hi = CANDIDATE_BAND
    out = [dict(e) for e in ladder]
    todo = [e for e in out if lo <= e["eval_return"] <= hi]
    for e in tqdm(todo, desc=f"measure {len(todo)} medium candidates ({episodes} episodes each)"):
        e["behaviour_return"] = behaviour_return(ladder_dir / e["path"], env_id, episodes)
    print("step: training eval -> behaviour return  "
          + ", ".join(f"{e['step']}: {e['eval_return']:.0f} -> {e['behaviour_return']:.0f}" for e in todo))
    return out


def pick_expert(ladder: list[dict]) -> dict:
    if not ladder:
        raise ValueError("the ladder is empty: train longer (make train-behaviour)")
    expert = max(ladder, key=lambda e: (e["eval_return"], -e["step"]))
    if expert["eval_return"] < EXPERT_MIN:
        warnings.warn(f"best checkpoint (step {expert['step']}) has eval return {expert['eval_return']:.0f} < "
                      f"{EXPERT_MIN:.0f}: the expert is weaker than D4RL's; train longer", stacklevel=2)
    return expert


def pick(ladder: list[dict]) -> tuple[dict, dict]:
    """(medium, expert) ladder entries."""
    return pick_medium(ladder), pick_expert(ladder)


def read_ladder(ladder_dir: Path, env_id: str) -> list[dict]:
    ladder_file = ladder_dir / "ladder.json"
    if not ladder_file.exists():
        raise FileNotFoundError(f"{ladder_file}: no ladder; run `make train-behaviour ENV={env_id}` first")
    return json.loads(ladder_file.read_text())


def ship(env_id: str, ladder_dir: str | Path, dest: str | Path = CHECKPOINT_DIR,
         expert_ladder_dir: str | Path | None = None, measure_episodes: int = 0) -> dict:
    """Medium and the replay experience come from `ladder_dir`; the expert from `expert_ladder_dir`
    (default: the same run). `measure_episodes` > 0 picks medium by its re-measured behaviour return."""
    import torch

    from latent_combo.utils import atomic_save

    ladder_dir, dest = Path(ladder_dir), Path(dest)
    expert_dir = Path(expert_ladder_dir) if expert_ladder_dir else ladder_dir
    ladder, key = read_ladder(ladder_dir, env_id), "eval_return"
    if measure_episodes > 0:
        ladder, key = measure_candidates(ladder_dir, ladder, env_id, measure_episodes), "behaviour_return"
    medium = pick_medium(ladder, key)
    expert = pick_expert(read_ladder(expert_dir, env_id))
    dest.mkdir(parents=True, exist_ok=True)
    shipped = {}
    for role, entry, src in (("medium", medium, ladder_dir), ("expert", expert, expert_dir)):
        ckpt = torch.load(src / entry["path"], map_location="cpu", weights_only=True)
        if ckpt.get("env", env_id) != env_id:
            raise ValueError(f"{src / entry['path']}: trained on {ckpt['env']!r}, not {env_id!r}")
        small = {"actor": {k: v.clone() for k, v in ckpt["actor"].items()}, "hidden": ckpt.get("hidden"),
                 "env": env_id, "step": int(entry["step"]), "eval_return": float(entry["eval_return"]),
                 "eval_success": float(entry.get("eval_success", 0.0))}
        if entry.get("behaviour_return") is not None:
            small["behaviour_return"] = float(entry["behaviour_return"])
        path = dest / f"{env_id}-{role}.pt"
        atomic_save(small, path)
        shipped[role] = {"path": str(path), "step": small["step"], "eval_return": small["eval_return"],
                         "behaviour_return": small.get("behaviour_return"), "run": str(src)}

    with np.load(ladder_dir / "experience.npz") as f:
        exp = {k: f[k] for k in f.files}
    replay_end = replay_endpoint(ladder, medium, key)
    keep = np.flatnonzero(exp["end_steps"] <= replay_end)
    replay = dest / f"{env_id}-replay.npz"
    tmp = replay.with_name(f".{replay.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, seeds=exp["seeds"][keep].astype(np.int64),
                        actions=exp["actions"][keep].astype(np.float32),
                        returns=exp["returns"][keep].astype(np.float32),
                        end_steps=exp["end_steps"][keep].astype(np.int64))
    os.replace(tmp, replay)
    shipped["replay"] = {"path": str(replay), "episodes": int(len(keep)),
                         "last_env_step": int(exp["end_steps"][keep].max()) if len(keep) else 0,
                         "bytes": replay.stat().st_size}
    return shipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="walker-walk")
    p.add_argument("--ladder", type=Path, default=None, help="SAC output folder (default runs/behaviour/ENV)")
    p.add_argument("--expert-ladder", type=Path, default=None,
                   help="SAC output folder to take the expert from (default: --ladder)")
    p.add_argument("--dest", type=Path, default=CHECKPOINT_DIR)
    p.add_argument("--measure-episodes", type=int, default=20,
                   help="re-measure medium candidates with N stochastic episodes (0: use the training eval)")
    a = p.parse_args(argv)
    s = ship(a.env, a.ladder or Path("runs/behaviour") / a.env, a.dest, a.expert_ladder, a.measure_episodes)
    for role in ("medium", "expert"):
        measured = s[role]["behaviour_return"]
        print(f"{role:<7} step {s[role]['step']:>8}  eval return {s[role]['eval_return']:7.1f}"
              + (f"  behaviour return {measured:7.1f}" if measured is not None else "") + f"  -> {s[role]['path']}")
    r = s["replay"]
    print(f"replay  {r['episodes']} training episodes up to env step {r['last_env_step']} "
          f"({r['bytes'] / 1e6:.1f} MB) -> {r['path']}")


if __name__ == "__main__":
    main()
