"""Our datasets handed to other tools: a Minari dataset written by the `minari` package, and checked by
loading it back.

Minari stores a Gymnasium episode: observations o_0 .. o_T and actions, rewards, terminations, truncations
of the T steps. Ours hold T+1 rows with a zero action and reward in row 0 (data.py), so row 0 of action and
reward is dropped and the flags of rows 1 .. T become terminations / truncations.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from latent_combo.data import OfflineDataset


def _spaces(ds: OfflineDataset):
    import gymnasium as gym

    obs = {"image": gym.spaces.Box(0, 255, ds.arrays["image"].shape[1:], np.uint8)}
    if ds.state_dim is not None:
        obs["state"] = gym.spaces.Box(-np.inf, np.inf, (ds.state_dim,), np.float32)
    return gym.spaces.Dict(obs), gym.spaces.Box(-1.0, 1.0, (ds.action_dim,), np.float32)


def minari_episodes(ds: OfflineDataset) -> list:
    """Every episode of `ds` as a Minari EpisodeBuffer."""
    from minari.data_collector import EpisodeBuffer

    out = []
    for i in range(len(ds)):
        ep = ds.episode(i)
        obs = {k: ep[k] for k in ("image", "state") if k in ep}
        terminal = ep["is_terminal"][1:].astype(bool)
        out.append(EpisodeBuffer(id=i, observations=obs, actions=ep["action"][1:].astype(np.float32),
                                 rewards=ep["reward"][1:].astype(np.float64), terminations=terminal,
                                 truncations=ep["is_last"][1:].astype(bool) & ~terminal))
    return out


def to_minari(directory: str | Path, dataset_id: str, lossless: bool = False, env_id: str | None = None):
    """Write the dataset folder `directory` as the Minari dataset `dataset_id` (under Minari's data path,
    $MINARI_DATASETS_PATH or ~/.minari/datasets). Minari stores images JPEG-encoded by default (lossy);
    `lossless` keeps the exact pixels (larger files). Returns the loaded MinariDataset."""
    import gymnasium as gym
    import minari

    from latent_combo import GYM_IDS

    ds = OfflineDataset(directory)
    meta = ds.metadata or {}
    env_id = env_id or meta.get("env")
    gym_id = {v: k for k, v in GYM_IDS.items()}.get(env_id)
    observation_space, action_space = _spaces(ds)
    description = (f"latent-combo dataset {Path(directory).name}"
                   + (f" ({env_id}, {meta['flavour']})" if "flavour" in meta else "")
                   + "; observations: 64px image" + (" and proprioceptive state" if ds.state_dim else "")
                   + (f"; eval env: gymnasium.make('{gym_id}') after `import latent_combo`" if gym_id else ""))
    # The env spec lets `dataset.recover_environment()` rebuild our env; only where its spaces are the data's
    # (a V-D4RL folder has no state, so its observations are not the registered env's).
    spec = gym.spec(gym_id) if gym_id is not None and ds.state_dim is not None else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(author|author_email|eval_env|env_spec|code_permalink).*")
        minari.create_dataset_from_buffers(
            dataset_id, minari_episodes(ds), env=spec, observation_space=observation_space,
            action_space=action_space, algorithm_name=meta.get("algorithm_name"), author="latent-combo",
            description=description, jpeg_encoding=not lossless)
    return minari.load_dataset(dataset_id)


def check_round_trip(directory: str | Path, exported) -> list[str]:
    """Compare a loaded Minari dataset with the folder it came from: episode count, actions, rewards,
    terminations, and the state where present (images are JPEG-lossy by default, so only their shape).
    Returns the problems found (empty: the same data)."""
    ds, problems = OfflineDataset(directory), []
    if exported.total_episodes != len(ds):
        problems.append(f"episodes: {exported.total_episodes} in Minari, {len(ds)} in {directory}")
    for i, m in enumerate(exported.iterate_episodes()):
        if i >= len(ds):
            break
        ep = ds.episode(i)
        checks = {"actions": (m.actions, ep["action"][1:]), "rewards": (m.rewards, ep["reward"][1:]),
                  "terminations": (m.terminations, ep["is_terminal"][1:]),
                  "image shape": (np.asarray(m.observations["image"]).shape, ep["image"].shape)}
        if "state" in ep:
            checks["state"] = (m.observations["state"], ep["state"])
        for name, (got, want) in checks.items():
            if np.shape(got) != np.shape(want) or not np.allclose(got, want, rtol=1e-6, atol=1e-6):
                problems.append(f"episode {i}: {name} differ")
    return problems
