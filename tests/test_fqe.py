"""latent_combo.fqe: fitted Q evaluation of a fixed policy on real transitions."""

import numpy as np
import pytest
import torch

from latent_combo import fqe

GAMMA, EPISODE = 0.9, 500  # a short horizon (10 steps) so that a few thousand updates converge


class ConstantActor:
    def __init__(self, action):
        self.action = action

    def sample(self, feat, deterministic=False):
        assert deterministic  # the estimate is of the policy as evaluated
        return torch.full((len(feat), 1), self.action), None


def bandit_transitions(n=4096, seed=0):
    """Random states that do not depend on the action; reward 1 - (a - 0.5)^2 at the dataset's uniform action a.
    A policy that always plays c is worth V = r(c) / (1 - gamma) from every state: in the score's units
    r(c) x 500 / 10 (the discount-weighted mean reward per step times the episode's steps / 10)."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n + 1, 3, generator=g)
    action = torch.rand(n, 1, generator=g) * 2 - 1
    return {"state": states[:-1], "next_state": states[1:], "action": action,
            "reward": 1 - (action[:, 0] - 0.5) ** 2, "discount": torch.ones(n)}


def reward(c):
    return 1 - (c - 0.5) ** 2


@pytest.mark.parametrize("action", [0.5, -0.3])
def test_fqe_recovers_a_known_policy_value(action):
    tr, lengths = bandit_transitions(), np.array([2049, 2049])
    out = fqe.fqe_estimate(ConstantActor(action), tr, lengths, "walker-walk", GAMMA, torch.device("cpu"),
                           updates=2000, n=64)
    assert out["fqe_return"] == pytest.approx(reward(action) * EPISODE / 10, rel=0.1, abs=1)
    assert out["fqe_levelled"] and out["fqe_updates"] == 2000 and len(out["fqe_q_trace"]) == 4


def test_fqe_ranks_a_better_policy_higher_and_the_data_decide():
    tr, lengths = bandit_transitions(), np.array([4097])
    run = lambda c: fqe.fqe_estimate(ConstantActor(c), tr, lengths, "walker-walk", GAMMA, torch.device("cpu"),
                                     updates=2000, n=32)["fqe_return"]
    assert run(0.5) > run(0.0) > run(-0.8)
    # The same policy on data rewarded the other way round is worth less: the figure comes from the transitions.
    flipped = {**tr, "reward": 1 - (tr["action"][:, 0] + 0.5) ** 2}
    assert fqe.fqe_estimate(ConstantActor(0.5), flipped, lengths, "walker-walk", GAMMA, torch.device("cpu"),
                            updates=2000, n=32)["fqe_return"] < run(0.5) - 10
