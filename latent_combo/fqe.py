"""Fitted Q evaluation (FQE): a fixed policy's return estimated from the dataset's real latent transitions alone.

The world model's own return estimate (latent_combo.estimate) rolls the policy out for 100 imagined steps, and on
walker pixels it rewards policies that fall (docs/selection.md): the imagined states drift where the data are thin.
FQE (Le et al. 2019, "Batch Policy Learning under Constraints") leans on the model only to encode real frames: a
critic Q(s, a) is fitted by temporal differences on the encoded dataset's transitions (s, a, r, s'), the target
bootstrapping at the evaluated policy's action, r + gamma Q'(s', pi(s')); the estimate is Q(s, pi(s)) at the same
start states the model-based estimate uses. Paine et al. 2020 ("Hyperparameter Selection for Offline Reinforcement
Learning") found FQE the best-ranking offline criterion among those they compared, on DeepMind control tasks among them.

The critic is separate from the agent's (which was trained with its own penalties and rollouts): its inputs are
standardised by the dataset's statistics, and its target follows it with tau = 0.05, so that a Bellman backup
propagates about every 20 updates and 6000 updates cover ~300 of them, past the discount's horizon of 100 (checked
by the fit's Q trace: `fqe_q_trace`). The value is read in the score's units as the model-based estimate's:
(1 - gamma) Q, the discount-weighted mean reward per step, times the episode's steps / 10.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from latent_combo.estimate import STARTS, start_indices
from latent_combo.evaluate import ci95
from latent_combo.nets import mlp

UPDATES = 6000
BATCH = 256
TAU = 0.05
LR = 3e-4


@torch.no_grad()
def policy_actions(actor, states: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The deterministic policy's action (as evaluated) at every state, in chunks."""
    return torch.cat([actor.sample(states[i:i + chunk], deterministic=True)[0] for i in range(0, len(states), chunk)])


def fit_fqe(actor, transitions: dict, gamma: float, device, updates: int = UPDATES, hidden: int = 256,
            seed: int = 0, log_every: int = 500) -> tuple[Callable, list]:
    """A critic of the fixed policy fitted on `transitions` (the run's encoded dataset): returns Q(s, a), input
    standardisation included, and the trace (update, mean Q on the sampled dataset pairs) to show the fit levelled
    off. The sampled batches and the initial weights depend on `seed` alone, so every candidate gets the same fit."""
    data = {k: v.to(device) for k, v in transitions.items()}
    data["next_action"] = policy_actions(actor, data["next_state"])
    mean, std = data["state"].mean(0), data["state"].std(0) + 1e-6
    feat, act = data["state"].shape[1], data["action"].shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        net = mlp(feat + act, hidden, 1, layers=2, norm=True).to(device)

    def critic(network, s, a):  # inputs standardised by the dataset's statistics
        return network(torch.cat([(s - mean) / std, a], -1)).squeeze(-1)

    target = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    n, trace = len(data["reward"]), []
    for step in range(1, updates + 1):
        i = torch.randint(n, (BATCH,), generator=gen).to(device)
        with torch.no_grad():
            y = data["reward"][i] + gamma * data["discount"][i] * critic(target, data["next_state"][i],
                                                                          data["next_action"][i])
        q = critic(net, data["state"][i], data["action"][i])
        loss = F.mse_loss(q, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, tp in zip(net.parameters(), target.parameters()):
                tp.lerp_(p, TAU)
        if step % log_every == 0:
            trace.append((step, float(q.detach().mean())))
    net.requires_grad_(False)
    return (lambda s, a: critic(net, s, a)), trace


def fqe_estimate(actor, transitions: dict, lengths: np.ndarray, env: str, gamma: float, device,
                 updates: int = UPDATES, n: int = STARTS) -> dict:
    """`fqe_return` (score units) with its interval over the start states, the fit's Q trace and its time."""
    from latent_combo.envs import make_env

    t0 = time.time()
    q, trace = fit_fqe(actor, transitions, gamma, device, updates)
    starts = transitions["state"][torch.as_tensor(start_indices(lengths, n))].to(device)
    with torch.no_grad():
        value = q(starts, policy_actions(actor, starts)).cpu().numpy()
    per_start = value * (1 - gamma) * make_env(env, render=False).max_steps / 10
    # Levelled off: the last two logged Q means within 5% of each other.
    last = [v for _, v in trace[-2:]]
    return {"fqe_return": float(per_start.mean()), "fqe_return_ci95": ci95(per_start), "fqe_updates": updates,
            "fqe_q_trace": trace, "fqe_levelled": bool(len(last) == 2 and abs(last[1] - last[0])
                                                      <= 0.05 * max(abs(last[0]), 1e-6)),
            "fqe_seconds": round(time.time() - t0, 1)}
