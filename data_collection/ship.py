"""Pick the medium and expert policies from a SAC ladder and ship them (plus the medium-replay experience).

    python -m data_collection.ship --env walker-walk [--ladder runs/behaviour/walker-walk-replay]
        [--expert-ladder runs/behaviour/walker-walk]

Reads `ladder.json` (checkpoints with their evaluation returns) and `experience.npz` (every training
episode as reset seed + actions) written by data_collection/sac.py, and writes to
data_collection/checkpoints/:
- ENV-medium.pt: the checkpoint whose eval return is closest to 500, within [400, 600] (else an error);
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


def pick_medium(ladder: list[dict]) -> dict:
    if not ladder:
        raise ValueError("the ladder is empty: train longer (make train-behaviour)")
    lo, hi = MEDIUM_BAND
    band = [e for e in ladder if lo <= e["eval_return"] <= hi]
    if not band:
        seen = ", ".join(f"{e['step']}: {e['eval_return']:.0f}" for e in ladder)
        raise ValueError(f"no checkpoint has an eval return in [{lo:.0f}, {hi:.0f}] for the medium policy "
                         f"(step: return = {seen}); evaluate more often (--eval-every) or retrain")
    return min(band, key=lambda e: (abs(e["eval_return"] - MEDIUM_TARGET), e["step"]))


def replay_endpoint(ladder: list[dict], medium: dict) -> int:
    """The env step where medium-replay's experience ends: the last checkpoint of the stretch of
    checkpoints in the medium band that contains the medium pick (the learner is still at medium level
    there), so that the replay holds as much medium-level training as the run has."""
    lo, hi = MEDIUM_BAND
    ordered = sorted(ladder, key=lambda e: e["step"])
    i = next(k for k, e in enumerate(ordered) if e["step"] == medium["step"])
    while i + 1 < len(ordered) and lo <= ordered[i + 1]["eval_return"] <= hi:
        i += 1
    return int(ordered[i]["step"])


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
         expert_ladder_dir: str | Path | None = None) -> dict:
    """Medium and the replay experience come from `ladder_dir`; the expert from `expert_ladder_dir`
    (default: the same run)."""
    import torch

    from latent_combo.utils import atomic_save

    ladder_dir, dest = Path(ladder_dir), Path(dest)
    expert_dir = Path(expert_ladder_dir) if expert_ladder_dir else ladder_dir
    medium = pick_medium(read_ladder(ladder_dir, env_id))
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
        path = dest / f"{env_id}-{role}.pt"
        atomic_save(small, path)
        shipped[role] = {"path": str(path), "step": small["step"], "eval_return": small["eval_return"],
                         "run": str(src)}

    with np.load(ladder_dir / "experience.npz") as f:
        exp = {k: f[k] for k in f.files}
    replay_end = replay_endpoint(read_ladder(ladder_dir, env_id), medium)
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
    a = p.parse_args(argv)
    s = ship(a.env, a.ladder or Path("runs/behaviour") / a.env, a.dest, a.expert_ladder)
    for role in ("medium", "expert"):
        print(f"{role:<7} step {s[role]['step']:>8}  eval return {s[role]['eval_return']:7.1f}  -> {s[role]['path']}")
    r = s["replay"]
    print(f"replay  {r['episodes']} training episodes up to env step {r['last_env_step']} "
          f"({r['bytes'] / 1e6:.1f} MB) -> {r['path']}")


if __name__ == "__main__":
    main()
