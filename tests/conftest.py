import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# Tiny models gain nothing from threads, and spinning OpenMP threads collapse when another process
# holds the second core.
torch.set_num_threads(1)


def make_episode(length: int, action_dim: int = 6, state_dim: int = 4, seed: int = 0, image_size: int = 64):
    """A synthetic episode in the on-disk layout; pixel and state values encode (seed, t)."""
    rng = np.random.default_rng(seed)
    n = length + 1
    action = rng.uniform(-1, 1, (n, action_dim)).astype(np.float32)
    action[0] = 0
    reward = rng.uniform(0, 1, n).astype(np.float32)
    reward[0] = 0
    image = np.zeros((n, image_size, image_size, 3), np.uint8)
    image[:, 0, 0, 0] = seed
    image[:, 0, 0, 1] = np.arange(n) % 256
    state = np.stack([np.full(n, seed), np.arange(n), np.zeros(n), np.zeros(n)], 1)[:, :state_dim]
    return {"image": image, "action": action, "reward": reward, "discount": np.ones(n, np.float32),
            "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
            "is_terminal": np.zeros(n, bool), "state": state.astype(np.float32)}


@pytest.fixture
def tiny_dataset(tmp_path):
    """Five episodes of differing lengths with a manifest."""
    from latent_combo.data import save_episode, write_metadata

    d = tmp_path / "ds"
    for i, length in enumerate([10, 14, 7, 20, 12]):
        save_episode(d / f"ep_{i:04d}.npz", make_episode(length, seed=i + 1))
    write_metadata(d, env="walker-walk", flavour="test")
    return d


def random_policy_dataset(env_id: str, directory, episodes: int = 3, steps: int = 12):
    """Episodes of a uniform-random policy in the real env, truncated to `steps`."""
    from latent_combo.data import save_episode, write_metadata
    from latent_combo.envs import make_env

    env = make_env(env_id)
    rng = np.random.default_rng(0)
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        rows = [dict(image=obs["image"], state=obs["state"], action=np.zeros(env.action_dim), reward=0.0)]
        for _ in range(steps):
            a = rng.uniform(-1, 1, env.action_dim)
            obs, r, _, _, _ = env.step(a)
            rows.append(dict(image=obs["image"], state=obs["state"], action=a, reward=r))
        ep = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
        n = steps + 1
        ep.update(discount=np.ones(n), is_first=np.arange(n) == 0, is_last=np.arange(n) == n - 1,
                  is_terminal=np.zeros(n, bool))
        save_episode(directory / f"ep_{i:06d}.npz", ep)
    env.close()
    write_metadata(directory, env=env_id, flavour="random", algorithm_name="uniform random")
    return directory


@pytest.fixture(scope="session")
def env_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("envdata")
    return {env: random_policy_dataset(env, root / env) for env in ("walker-walk", "sawyer-door")}
