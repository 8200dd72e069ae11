"""The policy's return estimated in its own world model: model-based off-policy evaluation, for offline selection.

From a fixed sample of dataset states (every candidate trained on one dataset sees the same ones: episode starts and
uniformly drawn steps, chosen by a fixed seed), the deterministic policy, as evaluated, is rolled out through each
prior head of the RSSM in turn for `horizon` steps; the reward head scores every step. A head's estimate for a start
is the discounted sum, as the agent's objective discounts it, turned into the score's units: the discount-weighted
mean reward per step times the episode's steps, / 10 (dm_control's normalised score), so an estimate reads like the
score it predicts. Reported: the mean over heads (`model_return`, with a 95% interval over the start states), and two
pessimistic figures, the lowest head's (`model_return_min_head`) and the mean less the heads' spread
(`model_return_pessimistic`). Sawyer's rewards are 0 or 1 per step: its estimate is also read as a success rate
(the share of rollouts whose predicted reward passes 0.5 at some step).

Horizon: 100 steps by default, the objective's own effective horizon 1 / (1 - gamma) at gamma 0.99: rewards beyond
it weigh under e^-1 in the discounted sum, while the model's error keeps compounding with every step.

On walker-walk, whose reward is a known function of the state the datasets store, the same rollouts are also read by
a ridge probe (latent -> state, fitted on the run's own encoded dataset) and scored by dm_control's own task at that
state (`model_return_probe_read`): where it parts from the reward head's figure, the model's states or its reward head
have drifted from what the simulator would do.

A policy trained on its own model's rollouts can exploit that model's errors, and an estimate in the same model then
rewards the exploit. `cross_estimate` tells exploitation from error the models share: it rolls the policy out in
another world model trained on the same data (another seed's, which the policy never trained against); that model
imagines the next state and decodes it, the policy's own model filters the decoded frame with its posterior, as it
filters real frames in the simulator, and the policy acts on that; the other model's reward head scores each step
(`cross_return`, the same figures as `model_return`). On walker pixels the two agree (LMBPO: 42.2 in its own model,
40.9 in seed 1's, 15.5 scored; docs/selection.md): the optimism is shared, not exploited.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from latent_combo.evaluate import ci95

HORIZON = 100
STARTS = 512
SUCCESS_REWARD = 0.5  # sawyer: a step rewarded above this is a success step (rewards are 0 or 1)


def start_indices(lengths: np.ndarray, n: int = STARTS, seed: int = 0) -> np.ndarray:
    """Flat transition indices into the encoded dataset (T_i - 1 transitions per episode, in episode order): half the
    sample episode starts (every episode's first step, evenly spread if there are more), half other steps, uniformly."""
    counts = np.asarray(lengths) - 1
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    firsts = offsets[np.linspace(0, len(offsets) - 1, min(len(offsets), n // 2)).round().astype(int)]
    rest = np.setdiff1d(np.arange(int(counts.sum())), firsts)
    return np.concatenate([firsts, rng.choice(rest, min(len(rest), n - len(firsts)), replace=False)])


@torch.no_grad()
def head_rollouts(wm, actor, starts: torch.Tensor, horizon: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every start rolled out through every prior head with the deterministic policy: features (K, N, H, F) and
    predicted rewards (K, N, H). The prior's z is sampled, as in training's rollouts, from a fixed seed."""
    rssm, k, n = wm.rssm, wm.rssm.ensemble, starts.shape[0]
    policy = lambda feat: actor.sample(feat, deterministic=True)[0]
    heads = torch.arange(k, device=starts.device).repeat_interleave(n)
    with torch.random.fork_rng(devices=[starts.device] if starts.device.type == "cuda" else []):
        torch.manual_seed(seed)
        feats, _ = rssm.imagine(rssm.split(starts.repeat(k, 1)), horizon, policy=policy, head=heads)
    reward = wm.reward(feats).squeeze(-1)
    return feats.view(k, n, horizon, -1), reward.view(k, n, horizon)


def discounted_score(reward: torch.Tensor, gamma: float, episode_steps: int) -> torch.Tensor:
    """(..., H) rewards -> (...) discount-weighted mean reward per step x episode steps / 10 (the score's units)."""
    weights = gamma ** torch.arange(reward.shape[-1], dtype=reward.dtype, device=reward.device)
    return (reward * weights).sum(-1) / weights.sum() * episode_steps / 10


def summarise(per_head: np.ndarray, prefix: str = "model_return") -> dict:
    """(K, N) per-head, per-start estimates -> the mean over heads with its interval and the pessimistic figures."""
    over_starts = per_head.mean(1)  # (K,)
    mean = per_head.mean(0)  # (N,)
    return {prefix: float(mean.mean()), f"{prefix}_ci95": ci95(mean),
            f"{prefix}_min_head": float(over_starts.min()),
            f"{prefix}_pessimistic": float(over_starts.mean() - over_starts.std()),
            f"{prefix}_heads": [float(v) for v in over_starts]}


def walker_qpos(state: np.ndarray) -> np.ndarray:
    """The walker's joint positions from its 24-d observation (7 bodies' xx, xz orientations, torso height, qvel): each
    body's pitch is atan2(xz, xx), a joint's angle minus its parent body's (the hinges turn about -y), the torso's
    pitch is rooty, rootz the height less the torso's 1.3 m, rootx 0 (no reward depends on it)."""
    pitch = np.arctan2(state[..., 1:14:2], state[..., 0:14:2])  # torso, r thigh, r leg, r foot, l thigh, l leg, l foot
    parent = pitch[..., [0, 1, 2, 0, 4, 5]]
    joints = -np.angle(np.exp(1j * (pitch[..., 1:] - parent)))  # wrapped to (-pi, pi]
    return np.concatenate([state[..., 14:15] - 1.3, np.zeros_like(state[..., :1]), pitch[..., :1], joints], -1)


def walker_reward(state: np.ndarray, action_repeat: int = 2) -> np.ndarray:
    """dm_control walker-walk's own reward for each 24-d observation, per agent step: the physics is set to the state
    the observation describes and the task scores it (both of an agent step's action repeats at its end state)."""
    from dm_control import suite

    env = suite.load("walker", "walk")
    physics, task = env.physics, env.task
    flat = state.reshape(-1, state.shape[-1])
    qpos, out = walker_qpos(flat), np.empty(len(flat))
    for i in range(len(flat)):
        physics.data.qpos[:] = qpos[i]
        physics.data.qvel[:] = flat[i, 15:24]
        physics.forward()
        out[i] = task.get_reward(physics)
    return action_repeat * out.reshape(state.shape[:-1])


STATE_REWARDS = {"walker-walk": walker_reward}


def dataset_arrays(data_path: str | Path, keys=("reward", "state")) -> dict[str, list[np.ndarray]]:
    """Only `keys` of every episode file (no frames): cheap next to loading the dataset."""
    from latent_combo.data import episode_files

    out = {k: [] for k in keys}
    for f in episode_files(data_path):
        with np.load(f) as ep:
            for k in keys:
                if k in ep.files:
                    out[k].append(ep[k])
    return out


def estimate(wm, actor, transitions: dict, lengths: np.ndarray, env: str, gamma: float, device,
             horizon: int = HORIZON, n: int = STARTS, states: list | None = None) -> dict:
    """The figures of the module docstring for one trained policy. `transitions` are the run's encoded dataset
    (latents.pt), `lengths` its episodes' lengths; `states` (the dataset's per-episode true states) adds the
    probe-read figure where the env's reward is known from the state."""
    from latent_combo.envs import SUCCESS_ENVS, make_env

    steps = make_env(env, render=False).max_steps
    idx = torch.as_tensor(start_indices(lengths, n))
    starts = transitions["state"][idx].to(device)
    feats, reward = head_rollouts(wm, actor, starts, horizon)
    out = {"horizon": horizon, "starts": len(idx), "heads": int(reward.shape[0]),
           **summarise(discounted_score(reward, gamma, steps).cpu().numpy())}
    if env in SUCCESS_ENVS:
        success = (reward > SUCCESS_REWARD).any(-1).float()  # (K, N)
        out.update(summarise(success.cpu().numpy(), "model_success"))
    if states is not None and env in STATE_REWARDS:
        from latent_combo.probe import fit_state_probe

        # The probe reads the encoded dataset's states (transition t starts at step t of its episode).
        y = np.concatenate([s[:-1] for s in states])
        probe = fit_state_probe(transitions["state"].numpy(), y)
        read = probe.predict(feats.reshape(-1, feats.shape[-1]).cpu().numpy()).reshape(*feats.shape[:3], -1)
        state_reward = torch.as_tensor(STATE_REWARDS[env](read), dtype=torch.float32)
        out.update(summarise(discounted_score(state_reward, gamma, steps).numpy(), "model_return_probe_read"))
    return out


@torch.no_grad()
def cross_rollouts(wm, actor, evaluator, starts: torch.Tensor, evaluator_starts: torch.Tensor, horizon: int,
                   seed: int = 0) -> torch.Tensor:
    """Start i rolled out in `evaluator` through its prior head i mod K, the policy acting on `wm`'s posterior of the
    evaluator's decoded frames. Returns the evaluator's predicted rewards (N, H)."""
    n, k = starts.shape[0], evaluator.rssm.ensemble
    heads = torch.arange(n, device=starts.device) % k
    own, other = wm.rssm.split(starts), evaluator.rssm.split(evaluator_starts)
    not_first = torch.zeros(n, 1, dtype=torch.bool, device=starts.device)
    rewards = []
    with torch.random.fork_rng(devices=[starts.device] if starts.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(horizon):
            action = actor.sample(torch.cat([own["h"], own["z"]], -1), deterministic=True)[0]
            other = evaluator.rssm.img_step(other, action, heads)
            feat = torch.cat([other["h"], other["z"]], -1)
            rewards.append(evaluator.reward(feat).squeeze(-1))
            frame = to_target_space(evaluator.decode(feat), evaluator, wm)
            post = wm.rssm.observe(wm.embed(frame[:, None]), action[:, None], not_first, state=own)
            own = {"h": post["h"][:, 0], "z": post["z"][:, 0]}
    return torch.stack(rewards, 1)


def to_target_space(decoded: torch.Tensor, source, dest) -> torch.Tensor:
    """`source`'s decoded observation in `dest`'s target space: the same for images; states are normalised by each
    model's own dataset statistics."""
    if source.obs == "image":
        return decoded
    return (decoded * source.state_std + source.state_mean - dest.state_mean) / dest.state_std


def cross_estimate(wm, actor, transitions: dict, evaluator, evaluator_transitions: dict, lengths: np.ndarray,
                   env: str, gamma: float, device, horizon: int = HORIZON, n: int = STARTS) -> dict:
    """`cross_return` figures (module docstring): the same starts as `estimate`, one evaluator head per start."""
    from latent_combo.envs import make_env

    if len(transitions["reward"]) != len(evaluator_transitions["reward"]):
        raise ValueError(f"the evaluator's encoded dataset has {len(evaluator_transitions['reward'])} transitions, "
                         f"the policy's {len(transitions['reward'])}: the evaluator must be trained on the same "
                         "dataset")
    steps = make_env(env, render=False).max_steps
    idx = torch.as_tensor(start_indices(lengths, n))
    reward = cross_rollouts(wm, actor, evaluator, transitions["state"][idx].to(device),
                            evaluator_transitions["state"][idx].to(device), horizon)
    k = evaluator.rssm.ensemble
    per_start = discounted_score(reward, gamma, steps).cpu().numpy()
    head_means = np.array([per_start[h::k].mean() for h in range(k)])
    return {"cross_horizon": horizon, "cross_starts": len(idx), "cross_return": float(per_start.mean()),
            "cross_return_ci95": ci95(per_start), "cross_return_min_head": float(head_means.min()),
            "cross_return_pessimistic": float(head_means.mean() - head_means.std()),
            "cross_return_heads": [float(v) for v in head_means]}


def format_estimate(e: dict) -> str:
    """The estimate in a few lines, in the score's units."""
    lines = [f"  model return {e['model_return']:.1f} ±{e['model_return_ci95']:.1f} (mean over {e['heads']} heads, "
             f"{e['starts']} starts, horizon {e['horizon']}); lowest head {e['model_return_min_head']:.1f}, "
             f"mean - spread {e['model_return_pessimistic']:.1f}"]
    if "model_success" in e:
        lines.append(f"  model success {e['model_success']:.0%} (lowest head {e['model_success_min_head']:.0%})")
    if "model_return_probe_read" in e:
        lines.append(f"  read by the probe and scored by the task: {e['model_return_probe_read']:.1f} "
                     f"±{e['model_return_probe_read_ci95']:.1f}")
    if "fqe_return" in e:
        fit = "levelled off" if e["fqe_levelled"] else "Q still moving"
        lines.append(f"  fitted Q evaluation on the real transitions: {e['fqe_return']:.1f} "
                     f"±{e['fqe_return_ci95']:.1f} ({e['fqe_updates']} updates, {fit})")
    if "cross_return" in e:
        lines.append(f"  in another world model ({e['cross_evaluator']}): {e['cross_return']:.1f} "
                     f"±{e['cross_return_ci95']:.1f}, lowest head {e['cross_return_min_head']:.1f}")
    return "\n".join(lines)


def load_trained(run_dir: Path, device=None, policy: bool = True):
    """A run's config, world model, agent (None unless `policy`), encoded dataset and dataset folder; a world-model-only
    run's dataset is encoded now (and cached in its latents.pt). `device` None: the run's own."""
    from latent_combo.evaluate import trained_policy
    from latent_combo.runs import dataset_dir, load_checkpoint, load_config
    from latent_combo.utils import pick_device

    cfg = load_config(run_dir)
    device = pick_device(device or cfg.device)
    names = ("wm.pt", "agent.pt", "latents.pt") if policy else ("wm.pt",)
    ckpts = {name: load_checkpoint(run_dir / name) for name in names}
    missing = [name for name, c in ckpts.items() if c is None]
    if missing:
        what = ("no world model: nothing to roll the policy out in" if ckpts["wm.pt"] is None
                else "the run is not trained")
        raise FileNotFoundError(f"{run_dir}: no {', '.join(missing)} ({what}; train it first)")
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    data_path = Path(results.get("dataset") or dataset_dir(cfg))
    wm, agent = trained_policy(cfg, ckpts["wm.pt"], ckpts["agent.pt"] if policy else None, device)
    if policy:
        transitions = ckpts["latents.pt"]["transitions"]
    else:
        from latent_combo.agent_training import real_transitions
        from latent_combo.data import OfflineDataset

        transitions = real_transitions(cfg, wm, OfflineDataset(data_path), run_dir, device)
    return cfg, wm, agent, transitions, data_path


def estimate_run(run_dir: str | Path, horizon: int = HORIZON, n: int = STARTS, device=None,
                 evaluator: str | Path | None = None, fqe_updates: int = 0) -> dict:
    """`latent-combo estimate RUN_DIR [--evaluator OTHER_RUN] [--fqe [--fqe-updates N]]`: the estimate for a
    trained run, written to RUN_DIR/estimate.json; with an evaluator, the cross-model figures too; with
    `fqe_updates` > 0, fitted Q evaluation on the real transitions (latent_combo.fqe). Figures an earlier call
    wrote and this one does not recompute are kept."""
    run_dir = Path(run_dir)
    cfg, wm, agent, transitions, data_path = load_trained(run_dir, device)
    device = next(wm.parameters()).device
    arrays = dataset_arrays(data_path)
    lengths = np.array([len(r) for r in arrays["reward"]])
    out = estimate(wm, agent.actor, transitions, lengths, cfg.env, cfg.agent.gamma, device, horizon, n,
                   arrays["state"] or None)
    if evaluator is not None:
        e_cfg, e_wm, _, e_transitions, e_data = load_trained(Path(evaluator), device, policy=False)
        if e_cfg.env != cfg.env or e_cfg.obs != cfg.obs:
            raise ValueError(f"--evaluator {evaluator}: a {e_cfg.env} {e_cfg.obs} world model; the run is "
                             f"{cfg.env} {cfg.obs}")
        out.update(cross_estimate(wm, agent.actor, transitions, e_wm, e_transitions, lengths, cfg.env,
                                  cfg.agent.gamma, device, horizon, n))
        out["cross_evaluator"] = str(evaluator)
    if fqe_updates:
        from latent_combo.fqe import fqe_estimate

        out.update(fqe_estimate(agent.actor, transitions, lengths, cfg.env, cfg.agent.gamma, device, fqe_updates, n))
    path = run_dir / "estimate.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    out = {**earlier, **out}
    path.write_text(json.dumps(out, indent=1))
    return out
