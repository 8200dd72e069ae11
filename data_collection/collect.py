"""Build the offline pixel datasets: `latent-combo collect --env ENV --flavour FLAVOUR`.

One `.npz` per episode (`ep_000000.npz`, ...) in the layout of latent_combo/data.py, then a
`metadata.json` manifest. Episode i resets the env with seed `seed * 1_000_000 + i` (walker
medium-replay: the recorded training seed) and draws its policy noise from
`np.random.default_rng([seed, i])`, so every episode is reproducible on its own, whatever the
worker count or the order episodes finish in.

Flavours (see data_collection/README.md for how each behaviour policy was made):
- expert / medium: that behaviour policy (data_collection/policies.py: behaviour_policy).
- medium-expert: episodes i < n // 2 from the medium policy, the rest from the expert policy.
- medium-replay: walker: the SAC training experience up to the medium checkpoint, replayed from the
  shipped seeds + actions (evenly spaced entries when it holds more than n episodes);
  sawyer: the scripted policy with noise decreasing linearly from random to the medium level.

`sawyer-door-close` datasets are the door-OPENING behaviour (same policies, door-open env, same
images) with the reward relabelled to "door closed" (paper Table 1); see `door_closed`.

Collection runs in a pool of `spawn`ed worker processes, one env each (fork after the parent has
made a GL context hangs), each writing its own files atomically. It is resumable: rerunning a
command skips episodes already on disk that load and have the expected length, rebuilds damaged
ones, and writes the manifest once every episode is there.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from data_collection import policies
from latent_combo import data
from latent_combo.data import DatasetError, load_episode, read_metadata, save_episode, verify
from latent_combo.envs import EPISODE_STEPS, SawyerDoor, WalkerWalk, check_env_id, check_render_settings, make_env
from latent_combo.runs import FLAVOURS

# Flavours whose episode i depends on the requested count (the medium/expert split, the replay spacing
# and noise schedule): such a dataset cannot be extended to another count, only rebuilt.
COUNT_DEPENDENT = ("medium-replay", "medium-expert")
CONFIG = ".collect.json"  # what the episodes in the folder were made with, written before the first one

# door-open-v3 puts its goal at door + (-0.3, -0.45, 0) and shows it in state[36:39]; door-close-v3
# (same model, same door positions) puts its goal at door + (0.2, -0.2, 0). So the door-close goal
# is state[36:39] + (0.5, 0.25, 0), readable from any door-open state.
DOOR_CLOSE_GOAL_OFFSET = np.array([0.5, 0.25, 0.0], np.float32)
DOOR_CLOSE_RADIUS = 0.08


def door_closed(state: np.ndarray) -> np.ndarray:
    """door-close-v3's success test evaluated on door-open-v3 states (any leading shape).

    Meta-World's SawyerDoorCloseEnvV3.evaluate_state: success = |handle - goal| <= 0.08, with the
    handle at state[4:7] and the goal at door + (0.2, -0.2, 0). In the door-open env the door starts
    closed (handle 0.012 from that goal: success at reset) and the policy opens it.
    """
    state = np.asarray(state, np.float32)
    goal = state[..., 36:39] + DOOR_CLOSE_GOAL_OFFSET
    return np.linalg.norm(state[..., 4:7] - goal, axis=-1) <= DOOR_CLOSE_RADIUS


def behaviour_env(env_id: str) -> str:
    """The env the behaviour runs in: door-close data is relabelled door-open data."""
    return "sawyer-door" if env_id == "sawyer-door-close" else env_id


def episode_path(out: Path, i: int) -> Path:
    return Path(out) / f"ep_{i:06d}.npz"


def plan(env_id: str, flavour: str, episodes: int) -> tuple[dict, list[str]]:
    """({part: policy}, [part of episode i]): which behaviour makes each episode."""
    check_env_id(env_id)
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; valid flavours: {', '.join(FLAVOURS)}")
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if flavour == "medium-expert":
        parts = ["medium"] * (episodes // 2) + ["expert"] * (episodes - episodes // 2)
    else:
        parts = [flavour] * episodes
    pols = {p: policies.behaviour_policy(env_id, p) for p in dict.fromkeys(parts)}
    replay = pols.get("medium-replay")
    if replay is not None and hasattr(replay, "entries") and episodes > len(replay):
        # The training run reached medium after fewer episodes than asked for: medium-replay is all of
        # them (as D4RL's, whose size the training run sets), never a repeat.
        print(f"note: {replay.path.name} holds {len(replay)} training episodes up to medium level; "
              f"medium-replay uses all {len(replay)} instead of {episodes}")
        parts = parts[:len(replay)]
    return pols, parts


# ---------------------------------------------------------------------------------------------------
# One episode


def run_episode(env, policy, reset_seed: int, rng: np.random.Generator) -> dict:
    """Roll out one episode; rows as in latent_combo/data.py (row 0: reset obs, zero action and reward)."""
    obs, _ = env.reset(seed=reset_seed)
    images, states, actions, rewards, terminals = [obs["image"]], [obs["state"]], [], [0.0], [False]
    done = False
    while not done:
        a = np.asarray(policy(obs, rng), np.float32)
        obs, r, term, trunc, _ = env.step(a)
        images.append(obs["image"])
        states.append(obs["state"])
        actions.append(a)
        rewards.append(r)
        terminals.append(bool(term))
        done = term or trunc
    n = len(rewards)
    action = np.zeros((n, len(actions[0])), np.float32)
    action[1:] = actions
    is_terminal = np.array(terminals)
    return {"image": np.stack(images), "action": action, "reward": np.array(rewards, np.float32),
            "discount": (1.0 - is_terminal).astype(np.float32), "is_first": np.arange(n) == 0,
            "is_last": np.arange(n) == n - 1, "is_terminal": is_terminal,
            "state": np.stack(states).astype(np.float32)}


def relabel_door_close(ep: dict) -> dict:
    """Reward 1.0 on rows where the door is closed (door-close-v3 success); row 0 keeps reward 0."""
    reward = door_closed(ep["state"]).astype(np.float32)
    reward[0] = 0.0
    return {**ep, "reward": reward}


_WORKER: dict = {}


def _init_worker(env_id: str, pols: dict, parts: list, out: str, seed: int, max_steps: int | None,
                 render: str = "fast", in_pool: bool = True) -> None:
    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # pragma: no cover
            pass
    env = make_env(behaviour_env(env_id), render=True, render_settings=render)
    if max_steps:
        env.max_steps = max_steps
    _WORKER.update(env=env, env_id=env_id, policies=pols, parts=parts, out=Path(out), seed=seed,
                   max_steps=max_steps)


def _collect_one(i: int) -> dict:
    w = _WORKER
    n = len(w["parts"])
    part = w["parts"][i]
    pol = w["policies"][part].for_episode(i, n)
    reset_seed = getattr(pol, "reset_seed", w["seed"] * 1_000_000 + i)
    ep = run_episode(w["env"], pol, reset_seed, np.random.default_rng([w["seed"], i]))
    ret = float(ep["reward"][1:].sum())
    recorded = getattr(pol, "recorded_return", None)
    if recorded is not None and not w["max_steps"] and abs(ret - recorded) > 0.01 + 1e-4 * abs(recorded):
        raise DatasetError(f"episode {i}: replaying training episode {pol.entry} (seed {reset_seed}) gave "
                           f"return {ret:.3f}, but {recorded:.3f} was recorded: the simulator or its version "
                           "differs from the one that trained the policy")
    if w["env_id"] == "sawyer-door-close":
        ep = relabel_door_close(ep)
    save_episode(episode_path(w["out"], i), ep)
    return {"index": i, "part": part, "return": float(ep["reward"][1:].sum()), "steps": len(ep["reward"]) - 1}


# ---------------------------------------------------------------------------------------------------
# Dataset


def default_out(env_id: str, flavour: str) -> Path:
    return Path("data") / env_id / flavour


def _episode_ok(path: Path, steps: int, action_dim: int) -> bool:
    if not path.exists():
        return False
    try:
        ep = load_episode(path)
    except DatasetError:
        return False
    return len(ep["reward"]) == steps + 1 and ep["action"].shape[1] == action_dim


def _command(env_id, flavour, episodes, seed, max_steps, out, render="fast") -> str:
    cmd = ["latent-combo", "collect", "--env", env_id, "--flavour", flavour, "--episodes", str(episodes),
           "--seed", str(seed), "--out", str(out)]
    cmd += ["--max-steps", str(max_steps)] if max_steps else []
    return shlex.join(cmd + (["--render", render] if render != "fast" else []))


def _algorithm_name(pols: dict) -> str:
    def one(d):
        if d["kind"] == "sac":
            return (f"SAC {d['env']} step {d['step']} (eval return {d['eval_return']:.0f}), "
                    + ("stochastic" if d["stochastic"] else "deterministic"))
        if d["kind"] == "scripted":
            return (f"scripted SawyerDoorOpenV3Policy + N(0, {d['noise_std']:g}) noise, "
                    f"random action w.p. {d['random_action_prob']:g}")
        if d["kind"] == "scripted-noise-schedule":
            return (f"scripted SawyerDoorOpenV3Policy, noise N(0, {d['start_noise_std']:g} -> {d['end_noise_std']:g}), "
                    f"random action w.p. {d['start_random_action_prob']:g} -> {d['end_random_action_prob']:g} "
                    "(linear over episodes)")
        if d["kind"] == "sac-training-replay":
            return f"SAC training experience replay ({d['file']}, {d['recorded_episodes']} episodes recorded)"
        return d["kind"]

    return "; ".join(f"{part}: {one(p.describe())}" for part, p in pols.items())


def _clear(out: Path) -> None:
    for p in list(out.glob("ep_*.npz")) + list(out.glob(".ep_*.tmp.npz")):
        p.unlink()
    for name in (data.METADATA, CONFIG):
        (out / name).unlink(missing_ok=True)


def _config_mismatch(old: dict, new: dict) -> list[str]:
    old = {"render": "fast", **old}  # recorded before --render existed: every such collection rendered fast
    keys = [k for k in new if k != "episodes" or new["flavour"] in COUNT_DEPENDENT]
    return [f"{k}: {old.get(k)!r} on disk, {new[k]!r} requested" for k in keys if old.get(k) != new[k]]


def is_complete(out: Path, episodes: int) -> bool:
    """metadata.json present, every file matching it, and exactly `episodes` episodes."""
    out = Path(out)
    try:
        meta = read_metadata(out)
        return meta is not None and meta.get("total_episodes") == episodes and not verify(out)
    except DatasetError:
        return False


def collect(env_id: str, flavour: str, episodes: int = 200, out=None, seed: int = 0, workers: int | None = None,
            force: bool = False, max_steps: int | None = None, progress: bool = True, render: str = "fast") -> Path:
    """Build (or finish building) the dataset `out` (default data/ENV/FLAVOUR); returns its folder. `render`: how
    the frames are rendered (envs.RENDER_SETTINGS: 'fast', or 'default', MuJoCo's own settings with multisampling
    and shadows, as V-D4RL's frames were), recorded in metadata.json."""
    from tqdm import tqdm

    pols, parts = plan(env_id, flavour, episodes)
    episodes = len(parts)
    out = Path(out) if out is not None else default_out(env_id, flavour)
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {max_steps}")
    steps = min(max_steps or EPISODE_STEPS[env_id], EPISODE_STEPS[env_id])
    max_steps = max_steps if steps < EPISODE_STEPS[env_id] else None
    check_render_settings(render)
    config = {"env": env_id, "flavour": flavour, "seed": seed, "max_steps": max_steps, "episodes": episodes,
              "render": render,
              "policies": {k: p.describe() for k, p in pols.items()}}
    out.mkdir(parents=True, exist_ok=True)
    if force:
        _clear(out)
    for tmp in out.glob(".ep_*.tmp.npz"):  # left by a killed writer
        tmp.unlink()

    # What is on disk must have been made the same way.
    old = None
    if (out / CONFIG).exists():
        old = json.loads((out / CONFIG).read_text())
    elif read_metadata(out) is not None:
        old = read_metadata(out).get("collect_config")
    files = data.episode_files(out)
    if old is None and files:
        raise DatasetError(f"{out}: holds {len(files)} .npz files but no record of how they were collected; "
                           "use --force to rebuild or another --out")
    if old is not None:
        problems = _config_mismatch(old, config)
        if problems:
            raise DatasetError(f"{out}: was collected with other settings ({'; '.join(problems)}); "
                               "use --force to rebuild it or another --out")
    extra = [p for p in files if not (p.stem.startswith("ep_") and p.stem[3:].isdigit()
                                      and int(p.stem[3:]) < episodes)]
    if extra:
        raise DatasetError(f"{out}: holds {len(extra)} episode file(s) beyond the {episodes} requested "
                           f"(e.g. {extra[0].name}); use --force to rebuild with {episodes} episodes")
    if is_complete(out, episodes):
        print(f"{out}: complete dataset of {episodes} episodes exists (use --force to rebuild)")
        return out

    from latent_combo.utils import atomic_write_text

    atomic_write_text(out / CONFIG, json.dumps(config, indent=1))
    (out / data.METADATA).unlink(missing_ok=True)  # stale until every episode is there
    action_dim = (WalkerWalk if env_id == "walker-walk" else SawyerDoor).action_dim
    todo = [i for i in range(episodes) if not _episode_ok(episode_path(out, i), steps, action_dim)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    t0 = time.time()
    bar = tqdm(total=episodes, initial=episodes - len(todo), desc=f"collect {env_id} {flavour}",
               unit="ep", disable=not progress or not todo)
    initargs = (env_id, pols, parts, str(out), seed, max_steps, render)
    try:
        if todo and workers == 1:
            _init_worker(*initargs, in_pool=False)
            for i in todo:
                _collect_one(i)
                bar.update()
        elif todo:
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=initargs)
            try:
                for _ in pool.imap_unordered(_collect_one, todo):
                    bar.update()
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
    finally:
        bar.close()
        _WORKER.clear()
    counts = {p: parts.count(p) for p in dict.fromkeys(parts)}
    meta_fields = dict(
        dataset_id=f"{env_id}-{flavour}", env=env_id, flavour=flavour, behaviour_env=behaviour_env(env_id),
        algorithm_name=_algorithm_name(pols), policies=config["policies"], episodes_per_policy=counts,
        seed=seed, reset_seeds="seed * 1_000_000 + i (medium-replay walker: the recorded training seeds)",
        rng="numpy default_rng([seed, i]) per episode", max_steps=max_steps, episode_steps=steps,
        reward=("door-close-v3 success, relabelled from door-open-v3 states (data_collection.collect.door_closed)"
                if env_id == "sawyer-door-close" else
                "sparse success (1.0 on steps where the door is open)" if env_id == "sawyer-door"
                else "dm_control walker-walk reward summed over the action repeat"),
        command=_command(env_id, flavour, episodes, seed, max_steps, out, render), argv=shlex.join(sys.argv),
        collect_config=config, collect_seconds=round(time.time() - t0, 1), workers=workers,
    )
    if flavour == "medium-replay" and hasattr(pols["medium-replay"], "entries"):
        meta_fields["replay_entries"] = pols["medium-replay"].entries(episodes).tolist()
    data.write_metadata(out, render=render, **meta_fields)  # frames made with envs.apply_render_settings(render)
    (out / CONFIG).unlink(missing_ok=True)  # metadata.json's collect_config takes over
    return out


def ensure_dataset(env_id: str, flavour: str, episodes: int, out=None, seed: int = 0,
                   workers: int | None = None) -> Path:
    """The dataset folder, collected first if missing or incomplete (an error if it was made differently)."""
    out = Path(out) if out is not None else default_out(env_id, flavour)
    meta = read_metadata(out) if out.is_dir() else None
    if meta and meta.get("env") == env_id and meta.get("flavour") == flavour and meta.get("seed") == seed \
            and is_complete(out, episodes):
        return out
    return collect(env_id, flavour, episodes, out=out, seed=seed, workers=workers)
