"""Behaviour policies for dataset collection, all with one interface.

    action = policy(obs, rng)   # obs: {"state": float32 (D,), ...}; rng: np.random.Generator
                                # -> float32 action in [-1, 1]

Every random draw comes from `rng`, so an episode is reproducible from its rng seed alone, whatever
process runs it. `policy.for_episode(i, n)` gives the policy for episode `i` of `n` (itself, unless the
policy changes along a dataset, as the noise schedule and the training-experience replay do), and
`policy.describe()` a JSON-able dict for the dataset's metadata.

`behaviour_policy(env_id, "medium" | "expert")` is the registry the collector uses.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
REPLAY_FILE = "walker-walk-replay.npz"

# Scripted sawyer-door policies: (Gaussian action-noise std, probability of a uniformly random action).
# Tuned on the state-only env; rates measured with `python -m data_collection.policies --env sawyer-door`
# (see data_collection/README.md).
DOOR_NOISE = {
    "expert": (0.2, 0.0),
    "medium": (0.3, 0.7),  # 70% of steps a uniformly random action: success about half the time
}
# medium-replay for sawyer: from all-random actions, linearly down to the medium level.
DOOR_REPLAY_START = (0.3, 1.0)


class Policy:
    """Base class: a callable (obs, rng) -> action, constant along a dataset."""

    def __call__(self, obs: dict, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def for_episode(self, i: int, n: int) -> Policy:
        return self

    def describe(self) -> dict:
        return {"kind": type(self).__name__}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class RandomPolicy(Policy):
    """Uniform random actions (a stand-in when no trained policy exists, e.g. in tests and benchmarks)."""

    def __init__(self, action_dim: int):
        self.action_dim = action_dim

    def __call__(self, obs, rng):
        return rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)

    def describe(self):
        return {"kind": "random", "action_dim": self.action_dim}


class SACPolicy(Policy):
    """A state-based TanhGaussianActor checkpoint saved by data_collection/sac.py (or shipped by ship.py).

    Stochastic by default, as D4RL behaviour data is: a = tanh(mu + sigma * eps), with eps drawn from
    `rng`. `stochastic=False` acts with tanh(mu).
    """

    def __init__(self, checkpoint_path: str | Path, stochastic: bool = True):
        import torch

        self.path = Path(checkpoint_path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such SAC checkpoint")
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = [k for k in ("actor", "env") if k not in ckpt]
        if missing:
            raise ValueError(f"{self.path}: not a behaviour checkpoint (missing {missing}); "
                             "expected a dict saved by data_collection/sac.py or data_collection/ship.py")
        self.stochastic = stochastic
        self.env = ckpt["env"]
        self.step = ckpt.get("step")
        self.eval_return = ckpt.get("eval_return")
        self.behaviour_return = ckpt.get("behaviour_return")  # re-measured by ship.py, if it was
        self._state_dict = {k: v.cpu().numpy() for k, v in ckpt["actor"].items()}
        self._actor = None

    def _build(self):
        import torch

        from latent_combo.nets import TanhGaussianActor

        sd = self._state_dict
        weights = sorted(k for k in sd if k.endswith(".weight"))
        first, last = sd[weights[0]], sd[weights[-1]]
        hidden, state_dim = first.shape
        actor = TanhGaussianActor(state_dim, last.shape[0] // 2, hidden, layers=len(weights) - 1)
        actor.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})
        actor.eval()
        self._actor = actor
        return actor

    def __getstate__(self):  # pickle the numpy weights only (cheap to send to spawned workers)
        return {k: v for k, v in self.__dict__.items() if k != "_actor"} | {"_actor": None}

    @property
    def action_dim(self) -> int:
        sd = self._state_dict
        return sd[sorted(k for k in sd if k.endswith(".weight"))[-1]].shape[0] // 2

    def __call__(self, obs, rng):
        import torch

        actor = self._actor or self._build()
        with torch.no_grad():
            mu, log_std = actor.dist(torch.as_tensor(obs["state"], dtype=torch.float32)[None])
        mu, std = mu[0].double().numpy(), log_std[0].double().exp().numpy()
        u = mu + std * rng.standard_normal(mu.shape) if self.stochastic else mu
        return np.tanh(u).astype(np.float32)

    def describe(self):
        d = {"kind": "sac", "checkpoint": self.path.name, "env": self.env, "step": self.step,
             "eval_return": self.eval_return, "stochastic": self.stochastic}
        return d if self.behaviour_return is None else d | {"behaviour_return": self.behaviour_return}


class ScriptedDoorPolicy(Policy):
    """Meta-World's SawyerDoorOpenV3Policy on the 39-d state, plus Gaussian noise (std `noise_std`);
    with probability `random_action_prob` per step the action is uniform in [-1, 1] instead. Clipped."""

    def __init__(self, noise_std: float, random_action_prob: float = 0.0):
        from metaworld.policies import SawyerDoorOpenV3Policy

        self.noise_std, self.random_action_prob = float(noise_std), float(random_action_prob)
        self._policy = SawyerDoorOpenV3Policy()

    def __call__(self, obs, rng):
        # get_action edits its input in place (door_pos[0] -= 0.05): hand it a copy.
        state = np.array(obs["state"], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
            a = np.asarray(self._policy.get_action(state), dtype=np.float64)
        a = a + self.noise_std * rng.standard_normal(a.shape)
        if self.random_action_prob > 0 and rng.random() < self.random_action_prob:
            a = rng.uniform(-1.0, 1.0, a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def describe(self):
        return {"kind": "scripted", "policy": "metaworld.policies.SawyerDoorOpenV3Policy",
                "noise_std": self.noise_std, "random_action_prob": self.random_action_prob}


class DoorNoiseSchedule(Policy):
    """Sawyer medium-replay: the scripted policy with noise decreasing linearly over the dataset's episodes,
    from `start` (random-like) at episode 0 to `end` (the medium level) at the last episode, standing in
    for the experience of a learner improving up to medium. `start`/`end` are (noise_std, random_action_prob).
    """

    def __init__(self, start=DOOR_REPLAY_START, end=DOOR_NOISE["medium"]):
        self.start, self.end = tuple(map(float, start)), tuple(map(float, end))

    def levels(self, i: int, n: int) -> tuple[float, float]:
        f = i / (n - 1) if n > 1 else 1.0
        return tuple(a + f * (b - a) for a, b in zip(self.start, self.end))

    def for_episode(self, i, n):
        return ScriptedDoorPolicy(*self.levels(i, n))

    def __call__(self, obs, rng):
        raise TypeError("DoorNoiseSchedule picks a policy per episode: call for_episode(i, n) first")

    def describe(self):
        return {"kind": "scripted-noise-schedule", "policy": "metaworld.policies.SawyerDoorOpenV3Policy",
                "start_noise_std": self.start[0], "start_random_action_prob": self.start[1],
                "end_noise_std": self.end[0], "end_random_action_prob": self.end[1], "schedule": "linear"}


class ReplayedEpisode(Policy):
    """Plays back recorded actions, ignoring observations; `reset_seed` is the seed to reset the env with."""

    def __init__(self, actions: np.ndarray, reset_seed: int, entry: int, recorded_return: float | None = None):
        self.actions, self.reset_seed, self.entry = actions, int(reset_seed), int(entry)
        self.recorded_return = recorded_return
        self._t = 0

    def __call__(self, obs, rng):
        if self._t >= len(self.actions):
            raise ValueError(f"replayed episode {self.entry} has only {len(self.actions)} recorded actions")
        a = self.actions[self._t]
        self._t += 1
        return np.asarray(a, dtype=np.float32)


class ExperienceReplay(Policy):
    """Walker medium-replay: the SAC training episodes up to the medium checkpoint, replayed from their
    recorded reset seeds and actions (MuJoCo is deterministic given both), in training order.

    With more recorded episodes than requested, episode i of n replays entry
    round(i * (N - 1) / (n - 1)): evenly spaced over the whole experience, so the dataset spans the
    learner's progress from random to medium, as the full replay buffer does. With fewer: an error.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with np.load(self.path) as f:
            self.seeds, self.actions = f["seeds"], f["actions"]
            self.returns = f["returns"] if "returns" in f.files else None
            self.end_steps = f["end_steps"] if "end_steps" in f.files else None

    def __len__(self) -> int:
        return len(self.seeds)

    def entries(self, n: int) -> np.ndarray:
        if n > len(self):
            raise ValueError(f"{self.path}: holds {len(self)} recorded training episodes, fewer than the "
                             f"{n} requested; ask for --episodes {len(self)} or fewer")
        if n == 1:
            return np.array([len(self) - 1])
        return np.round(np.arange(n) * (len(self) - 1) / (n - 1)).astype(int)

    def for_episode(self, i, n):
        e = int(self.entries(n)[i])
        ret = float(self.returns[e]) if self.returns is not None else None
        return ReplayedEpisode(self.actions[e], self.seeds[e], e, ret)

    def __call__(self, obs, rng):
        raise TypeError("ExperienceReplay picks an episode per index: call for_episode(i, n) first")

    def describe(self):
        d = {"kind": "sac-training-replay", "file": self.path.name, "recorded_episodes": len(self),
             "selection": "evenly spaced entries in training order, round(i * (N - 1) / (n - 1))"}
        if self.end_steps is not None and len(self.end_steps):
            d["last_env_step"] = int(self.end_steps.max())
        return d


def _checkpoint(name: str) -> Path:
    path = CHECKPOINT_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the walker behaviour policies ship in data_collection/checkpoints/. "
            "Retrain them with `make train-behaviour ENV=walker-walk`, then "
            "`python -m data_collection.ship --env walker-walk`")
    return path


def behaviour_policy(env_id: str, flavour_part: str) -> Policy:
    """The behaviour policy of `env_id` for one part of a flavour: "medium", "expert" or "medium-replay".

    sawyer-door-close uses the door-opening policies (its datasets are relabelled door-open data).
    """
    from latent_combo.envs import check_env_id

    check_env_id(env_id)
    if flavour_part not in ("medium", "expert", "medium-replay"):
        raise ValueError(f"unknown behaviour {flavour_part!r}; expected medium, expert or medium-replay")
    if env_id == "walker-walk":
        if flavour_part == "medium-replay":
            return ExperienceReplay(_checkpoint(REPLAY_FILE))
        return SACPolicy(_checkpoint(f"walker-walk-{flavour_part}.pt"))
    if flavour_part == "medium-replay":
        return DoorNoiseSchedule()
    return ScriptedDoorPolicy(*DOOR_NOISE[flavour_part])


def success_rate(policy: Policy, env_id: str = "sawyer-door", episodes: int = 40, seed: int = 0) -> dict:
    """Success rate (success at any step) and mean sparse return of `policy` on the state-only env."""
    from latent_combo.envs import make_env

    env = make_env(env_id, render=False)
    successes, returns = [], []
    for i in range(episodes):
        pol = policy.for_episode(i, episodes)
        rng = np.random.default_rng([seed, i])
        obs, done, success, ret = env.reset(seed=seed * 1_000_000 + i)[0], False, False, 0.0
        while not done:
            obs, r, term, trunc, info = env.step(pol(obs, rng))
            success |= bool(info.get("success", False))
            ret += r
            done = term or trunc
        successes.append(success)
        returns.append(ret)
    return {"episodes": episodes, "success_rate": float(np.mean(successes)), "return_mean": float(np.mean(returns))}


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Measure the scripted sawyer-door behaviour policies' success rates.")
    p.add_argument("--env", default="sawyer-door", choices=["sawyer-door"])
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, nargs="*", default=None, help="extra noise_std levels to try")
    p.add_argument("--random-prob", type=float, default=0.0)
    a = p.parse_args(argv)
    pols = {k: behaviour_policy(a.env, k) for k in ("expert", "medium", "medium-replay")}
    for s in a.noise or []:
        pols[f"noise={s},random={a.random_prob}"] = ScriptedDoorPolicy(s, a.random_prob)
    for name, pol in pols.items():
        r = success_rate(pol, a.env, a.episodes, a.seed)
        print(f"{name:<28} success {r['success_rate']:6.1%}  return {r['return_mean']:6.1f}  "
              f"({r['episodes']} episodes)  {pol.describe()}")


if __name__ == "__main__":
    main()
