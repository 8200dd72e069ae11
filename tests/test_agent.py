import dataclasses

import numpy as np
import pytest
import torch

from latent_combo import agent as agent_mod
from latent_combo import losses
from latent_combo.agent import Agent
from latent_combo.config import ALGOS, resolve
from latent_combo.latent import TransitionBuffer

F, A = 12, 3


def agent_cfg(**kw):
    return dataclasses.replace(resolve("debug").agent, **kw)


def batch(n, seed=0, action=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, A, generator=g) * 2 - 1 if action is None else action.expand(n, A).clone()
    return {"state": torch.randn(n, F, generator=g), "action": a, "reward": torch.randn(n, generator=g),
            "next_state": torch.randn(n, F, generator=g), "discount": torch.ones(n)}


@pytest.mark.parametrize("form", ["logsumexp", "policy"])
def test_loss_terms_finite_scalars(form):
    torch.manual_seed(0)
    ag = Agent(agent_cfg(penalty_form=form), "combo", F, A)
    real, model = batch(16), batch(16, 1)
    b, bm, _ = losses.bellman_loss(ag.critic, ag.target_critic, ag.actor, 0.1, real, 0.99)
    p, pm = losses.conservative_penalty(ag.critic, ag.actor, model["state"], real["state"], real["action"], form, 4)
    a, am, logp = losses.actor_loss(ag.actor, ag.critic, 0.1, real["state"])
    al, _ = losses.alpha_loss(ag.log_alpha, logp, -A)
    bc, _ = losses.bc_loss(ag.actor, real["state"], real["action"])
    for x in (b, p, a, al, bc):
        assert x.dim() == 0 and torch.isfinite(x)
    for m in (bm, pm, am):
        assert all(np.isfinite(v) for v in m.values())


def test_entropy_backup_is_the_only_difference_of_the_two_targets():
    ag = Agent(agent_cfg(), "combo", F, A)
    b, alpha, gamma = batch(32), 0.3, 0.99
    targets = {}
    for backup in (True, False):
        torch.manual_seed(1)  # the same a' ~ pi(s') for both
        _, metrics, _ = losses.bellman_loss(ag.critic, ag.target_critic, ag.actor, alpha, b, gamma, backup)
        targets[backup] = metrics["td_target"]
    torch.manual_seed(1)
    with torch.no_grad():
        _, next_logp = ag.actor.sample(b["next_state"])
    assert targets[True] == pytest.approx(float(targets[False] - gamma * alpha * next_logp.mean()), abs=1e-5)
    assert abs(float(targets[True] - targets[False])) > 1e-3


def test_bellman_loss_is_the_full_squared_error_summed_over_critics():
    """The authors' scale (CQL / COMBO code, OfflineRL-Kit): sum_k mean (Q_k - y)^2, no 1/2, so beta compares with
    the paper's grid."""
    ag = Agent(agent_cfg(), "combo", F, A)
    b = batch(32)
    torch.manual_seed(2)
    loss, metrics, q = losses.bellman_loss(ag.critic, ag.target_critic, ag.actor, 0.0, b, 0.99, False)
    torch.manual_seed(2)
    with torch.no_grad():
        a2, _ = ag.actor.sample(b["next_state"])
        y = b["reward"] + 0.99 * b["discount"] * ag.target_critic(b["next_state"], a2).min(0).values
    assert float(loss) == pytest.approx(float(((q - y) ** 2).mean(1).sum()), rel=1e-6)


@pytest.mark.parametrize("form", ["mse", "nll"])
def test_bc_fits_actions_clipped_at_the_bound(form):
    # Behaviour actions clipped at +-1 (a scripted expert plus noise): the squared error recovers them; the
    # tanh-Gaussian likelihood (agent.bc_loss=nll) does not, its std inflating on the clipped targets.
    torch.manual_seed(0)
    states = torch.randn(512, F)
    target = torch.where(states[:, :1] > 0, 1.0, -1.0).expand(-1, A)
    actions = (target + 0.2 * torch.randn(512, A)).clamp(-1, 1)
    ag = Agent(agent_cfg(actor_lr=1e-3, bc_loss=form), "bc", F, A)
    for _ in range(500):
        idx = torch.randint(0, 512, (64,))
        ag.update({"state": states[idx], "action": actions[idx]}, None)
    with torch.no_grad():
        pred, _ = ag.actor.sample(states, deterministic=True)
    signs, error = (pred.sign() == target).float().mean(), (pred - target).abs().mean()
    if form == "mse":
        assert signs > 0.95 and error < 0.2
    else:  # measured: 55% of the signs, mean error 0.98
        assert signs < 0.8 and error > 0.5


@pytest.mark.parametrize("trunk", [0, 8])
def test_batched_critic_matches_per_action_evaluation(trunk):
    torch.manual_seed(0)
    critic = Agent(agent_cfg(critic_trunk=trunk), "combo", F, A).critic
    assert (critic.trunk is not None) == bool(trunk)
    s, acts = torch.randn(5, F), torch.rand(4, 5, A)
    many = critic(s, acts)
    one_by_one = torch.stack([critic(s, acts[r]) for r in range(4)], 1)
    torch.testing.assert_close(many, one_by_one)


@pytest.mark.parametrize("algo", ["combo", "cql"])
def test_beta_zero_removes_the_penalty_exactly(algo):
    def critic_after_one_step(algo, beta):
        torch.manual_seed(0)
        ag = Agent(agent_cfg(beta=beta), algo, F, A)
        ag.update_critic(batch(16), batch(16, 1) if ag.uses_rollouts else None)
        return ag.critic.state_dict()

    plain = critic_after_one_step("lmbpo" if algo == "combo" else "cql", 0.0)
    zero = critic_after_one_step(algo, 0.0)
    for k in plain:
        torch.testing.assert_close(plain[k], zero[k], rtol=0, atol=0)
    assert any(not torch.equal(plain[k], v) for k, v in critic_after_one_step(algo, 1.0).items())


@pytest.mark.parametrize("form", ["logsumexp", "policy"])
def test_penalty_lowers_q_out_of_distribution(form):
    """Tiny hand-made dataset: every dataset action is (0.5, 0.5, 0.5), rewards zero. With the
    penalty, Q at dataset actions ends clearly above Q at other actions; without it, no gap."""
    a_data = torch.full((A,), 0.5)

    def gap(beta):
        torch.manual_seed(0)
        ag = Agent(agent_cfg(beta=beta, penalty_form=form, critic_lr=3e-3), "combo", F, A)
        data = batch(64, 0, action=a_data)
        data["reward"].zero_()
        for _ in range(150):
            ag.update_critic(data, {**data, "action": torch.rand(64, A) * 2 - 1})
        with torch.no_grad():
            q_data = ag.critic(data["state"], data["action"]).mean()
            q_ood = ag.critic(data["state"], torch.rand(16, 64, A) * 2 - 1).mean()
        return (q_data - q_ood).item()

    with_penalty, without = gap(1.0), gap(0.0)
    assert with_penalty > 0.5 and with_penalty > 5 * abs(without), (with_penalty, without)


def test_algo_switches_touch_only_their_part(monkeypatch):
    calls = []
    real_penalty = losses.conservative_penalty

    def spy(critic, actor, push_down, data_states, data_actions, *args, **kwargs):
        calls.append((push_down, data_states))
        return real_penalty(critic, actor, push_down, data_states, data_actions, *args, **kwargs)

    monkeypatch.setattr(agent_mod.losses, "conservative_penalty", spy)
    expected = {"combo": (True, 0.5, "model"), "lompo": (True, 0.5, None), "lmbpo": (True, 0.5, None),
                "cql": (False, 1.0, "real"), "bc": (False, 1.0, None)}
    for algo in ALGOS:
        torch.manual_seed(0)
        ag = Agent(agent_cfg(real_ratio=0.5), algo, F, A)
        rollouts, f, pushed = expected[algo]
        assert (ag.uses_rollouts, ag.real_ratio) == (rollouts, f), algo
        real, model = batch(8), batch(8, 1)
        critic_before = {k: v.clone() for k, v in ag.critic.state_dict().items()}
        calls.clear()
        ag.update(real, model if rollouts else None)
        if pushed is None:
            assert not calls, algo
        else:
            (down, up), = calls
            assert down is (model["state"] if pushed == "model" else real["state"]), algo
            assert up is real["state"], algo  # Q pushed up on dataset pairs only
        critic_moved = any(not torch.equal(critic_before[k], v) for k, v in ag.critic.state_dict().items())
        assert critic_moved == (algo != "bc"), algo


def test_lompo_reward_penalty_is_head_disagreement():
    from latent_combo.latent import rollout
    from latent_combo.world_model import WorldModel

    cfg = resolve("debug")
    torch.manual_seed(0)
    wm = WorldModel(cfg.wm, "state", A, 4, np.zeros(4), np.ones(4))
    ag = Agent(cfg.agent, "lompo", wm.rssm.feat_dim, A)
    start = torch.randn(6, wm.rssm.feat_dim)
    torch.manual_seed(1)
    plain, _ = rollout(wm, ag.actor, start, 3, 0.0)
    torch.manual_seed(1)
    penalised, m = rollout(wm, ag.actor, start, 3, 5.0)
    torch.testing.assert_close(plain["next_state"], penalised["next_state"])
    assert (penalised["reward"] < plain["reward"]).all() and m["rollout/disagreement"] > 0
    assert plain["state"].shape == (18, wm.rssm.feat_dim) and plain["action"].shape == (18, A)
    # The first state of each rollout is the real start state; later ones are the model's.
    torch.testing.assert_close(plain["state"].view(6, 3, -1)[:, 0], start)
    torch.testing.assert_close(plain["state"].view(6, 3, -1)[:, 1:], plain["next_state"].view(6, 3, -1)[:, :-1])


def test_penalty_with_precomputed_data_q_is_identical():
    torch.manual_seed(0)
    ag = Agent(agent_cfg(), "combo", F, A)
    real, model = batch(16), batch(16, 1)
    torch.manual_seed(5)
    p1, _ = losses.conservative_penalty(ag.critic, ag.actor, model["state"], real["state"], real["action"])
    torch.manual_seed(5)
    p2, _ = losses.conservative_penalty(ag.critic, ag.actor, model["state"], real["state"], real["action"],
                                        q_data=ag.critic(real["state"], real["action"]))
    torch.testing.assert_close(p1, p2)


def test_rho_dataset_adds_dataset_states_to_the_pushed_down_ones(monkeypatch):
    calls = []
    real_penalty = losses.conservative_penalty

    def spy(critic, actor, push_down, *args, **kwargs):
        calls.append(push_down)
        return real_penalty(critic, actor, push_down, *args, **kwargs)

    monkeypatch.setattr(agent_mod.losses, "conservative_penalty", spy)
    real, model = batch(8), batch(8, 1)
    Agent(agent_cfg(rho_dataset=True), "combo", F, A).update(real, model)
    (down,) = calls
    assert torch.equal(down, torch.cat([model["state"], real["state"]]))


def test_bc_warmup_fits_the_data_actions_while_the_critic_trains():
    """agent.bc_warmup: warm-start updates move the actor onto the dataset's actions (its loss is BC's plus the
    entropy term) and the critic by its usual eq. 2 step; past the warm start the actor follows eq. 3 again."""
    torch.manual_seed(0)
    ag = Agent(agent_cfg(actor_lr=1e-3), "combo", F, A)
    real, model = batch(64), batch(64, 1)
    real["action"] = torch.tanh(real["state"][:, :A])  # a learnable behaviour
    torch.manual_seed(1)
    loss, _, logp = losses.warm_start_actor_loss(ag.actor, 0.1, real["state"], real["action"])
    torch.manual_seed(1)
    bc, _ = losses.bc_loss(ag.actor, real["state"], real["action"])
    assert torch.allclose(loss, bc + 0.1 * logp.mean())
    critic_before = [p.clone() for p in ag.critic.parameters()]
    first = ag.update(real, model, bc_actor=True)
    assert {"bc_mse", "bellman", "regulariser", "entropy", "alpha"} <= set(first)
    assert any(not torch.equal(p, q) for p, q in zip(critic_before, ag.critic.parameters()))
    for _ in range(300):
        last = ag.update(real, model, bc_actor=True)
    assert last["bc_mse"] < 0.2 * first["bc_mse"], (first["bc_mse"], last["bc_mse"])
    assert "bc_mse" not in ag.update(real, model) and "actor" in ag.update(real, model)


def test_target_gap_tunes_beta_by_dual_ascent():
    """agent.target_gap: beta rises while the regulariser is above the target and falls while below; a checkpoint
    carries it (its optimiser is among the agent's)."""
    real, model = batch(32), batch(32, 1)
    moved = {}
    for target in (-100.0, 100.0):
        torch.manual_seed(0)
        ag = Agent(agent_cfg(target_gap=target, beta=0.5, beta_lr=1e-2), "combo", F, A)
        assert "beta_opt" in ag.optimisers() and "log_beta" in ag.state_dict()
        for _ in range(20):
            metrics = ag.update(real, model)
        moved[target] = float(metrics["beta"])
    assert moved[-100.0] > 0.5 * np.exp(0.1) and moved[100.0] < 0.5 * np.exp(-0.1), moved
    assert not Agent(agent_cfg(), "combo", F, A).tunes_beta
    assert not Agent(agent_cfg(target_gap=0.0), "lmbpo", F, A).tunes_beta


class _DeterministicActor(torch.nn.Module):
    """TD3+BC's deterministic policy inside TanhGaussianActor's interface: draw() returns tanh(mu), log pi = 0."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(F, A)

    def dist(self, s):
        return self.net(s), None

    @staticmethod
    def draw(mu, log_std):
        return torch.tanh(mu), torch.zeros(mu.shape[0])


def test_td3bc_alpha_reproduces_td3bc_actor_loss():
    """On dataset rows alone, without entropy, agent.td3bc_alpha's loss is TD3+BC's (sfujim/TD3_BC):
    -lambda Q(s, pi(s)).mean() + mse(pi(s), a), lambda = alpha / |Q|.mean() detached, to 1e-6."""
    torch.manual_seed(0)
    actor, critic = _DeterministicActor(), Agent(agent_cfg(), "combo", F, 1).critic
    critic = type(critic)(F, A, 16, 2, k=1)  # TD3+BC's actor reads one critic
    real = batch(64)
    loss, metrics, _ = losses.actor_loss(actor, critic, 0.0, real["state"], 2.5, real["action"])
    pi = torch.tanh(actor.net(real["state"]))
    q = critic(real["state"], pi)[0]
    lmbda = 2.5 / q.abs().mean().detach()
    td3bc = -lmbda * q.mean() + torch.nn.functional.mse_loss(pi, real["action"])
    assert abs(float(loss - td3bc)) < 1e-6
    assert float(metrics["td3bc_lambda"]) == pytest.approx(float(lmbda), rel=1e-6)
    # Its gradient too: the constraint is normalised, not just the value.
    g = torch.autograd.grad(loss, actor.net.weight)[0]
    g_ref = torch.autograd.grad(td3bc, actor.net.weight)[0]
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_td3bc_rows_weigh_the_same_in_both_terms():
    """With model rows after the dataset rows, each dataset row's squared error is divided by all rows, as its Q term:
    doubling the batch with model rows halves the constraint's weight per dataset row relative to a dataset-only
    batch, and never counts the error per action dimension more than once."""
    torch.manual_seed(0)
    actor, critic = _DeterministicActor(), type(Agent(agent_cfg(), "combo", F, A).critic)(F, A, 16, 2, k=1)
    real, model = batch(32), batch(32, 1)
    states = torch.cat([real["state"], model["state"]])
    loss, _, _ = losses.actor_loss(actor, critic, 0.0, states, 1.0, real["action"])
    pi = torch.tanh(actor.net(states))
    q = critic(states, pi)[0]
    expected = -q.mean() / q.abs().mean().detach() + (pi[:32] - real["action"]).pow(2).mean(-1).sum() / 64
    assert abs(float(loss - expected)) < 1e-6


def test_td3bc_alpha_keeps_the_actor_on_the_data_actions():
    """With the constraint the actor stays near the behaviour's actions while maximising Q; without it it does not."""
    real, model = batch(64), batch(64, 1)
    real["action"] = torch.tanh(real["state"][:, :A])
    errors = {}
    for alpha in (0.0, 0.1):
        torch.manual_seed(0)
        ag = Agent(agent_cfg(actor_lr=1e-3, td3bc_alpha=alpha), "combo", F, A)
        for _ in range(300):
            metrics = ag.update(real, model)
        with torch.no_grad():
            a_pi, _ = ag.actor.sample(real["state"], deterministic=True)
        errors[alpha] = (a_pi - real["action"]).pow(2).sum(-1).mean().item()
        assert ("bc_mse" in metrics) == (alpha > 0)
    assert errors[0.1] < 0.5 * errors[0.0], errors


def test_standardise_fits_the_inputs_and_travels_with_the_weights():
    torch.manual_seed(0)
    ag = Agent(agent_cfg(standardise=True), "combo", F, A)
    states = torch.randn(500, F) * 5 + 3
    ag.fit_standardiser(states)
    z = ag.actor.standardise(states)
    assert torch.allclose(z.mean(0), torch.zeros(F), atol=1e-5) and torch.allclose(z.std(0), torch.ones(F), atol=1e-3)
    assert torch.equal(ag.target_critic.standardise.mean, ag.critic.standardise.mean)
    again = Agent(agent_cfg(standardise=True), "combo", F, A)
    again.load_state_dict(ag.state_dict())
    assert torch.equal(again.actor.standardise.std, ag.actor.standardise.std)
    plain = Agent(agent_cfg(), "combo", F, A)
    assert not any("standardise" in k for k in plain.state_dict())  # old checkpoints still load


def test_sampled_penalty_gradient_is_the_exact_one_in_expectation(monkeypatch):
    """agent.penalty_grad=sampled: the same soft-maximum value as the exact form on the same proposal actions, and
    its gradient (through one action per state drawn from the softmax weights) averages to the exact gradient."""
    torch.manual_seed(0)
    ag = Agent(agent_cfg(hidden=16), "combo", F, A)
    real, model = batch(6), batch(6, 1)
    fixed = losses._proposal_actions(ag.actor, model["state"], A, 3)
    monkeypatch.setattr(losses, "_proposal_actions", lambda *args: fixed)
    with torch.no_grad():  # spread Q over the actions so that the softmax weights are far from one-hot or uniform
        ag.critic.layers[-1].weight.mul_(20)
    params = list(ag.critic.parameters())

    def grad(form_grad):
        penalty, _ = losses.conservative_penalty(ag.critic, ag.actor, model["state"], real["state"], real["action"],
                                                 "logsumexp", 3, grad=form_grad)
        return penalty.detach(), torch.cat([g.flatten() for g in torch.autograd.grad(penalty, params)])

    exact_value, exact = grad("exact")
    draws = [grad("sampled") for _ in range(3000)]
    assert all(torch.allclose(v, exact_value, atol=1e-4) for v, _ in draws)
    mean = torch.stack([g for _, g in draws]).mean(0)
    assert torch.nn.functional.cosine_similarity(mean, exact, 0) > 0.99
    assert abs(mean.norm() / exact.norm() - 1) < 0.05
    single = draws[0][1]  # one draw is a noisy estimate, not the exact gradient
    assert torch.nn.functional.cosine_similarity(single, exact, 0) < 0.999
    with pytest.raises(ValueError, match="penalty grad"):
        losses.conservative_penalty(ag.critic, ag.actor, model["state"], real["state"], real["action"], grad="x")


def test_model_buffer_age_counts_updates_since_its_rows_were_added():
    buf = TransitionBuffer(10, F, A, torch.device("cpu"))
    assert buf.mean_age(0) == 0.0
    buf.add(batch(5), step=0)
    assert buf.mean_age(40) == 40.0
    buf.add(batch(5), step=100)
    buf.add(batch(5), step=200)  # FIFO: the step-0 rows are gone, half the rows are from 100, half from 200
    assert buf.mean_age(250) == 100.0
    copy = TransitionBuffer(10, F, A, torch.device("cpu"))
    copy.load_state_dict(buf.state_dict())
    assert copy.mean_age(250) == 100.0


def test_q_rise_reads_a_still_climbing_critic_apart_from_a_levelled_one():
    from latent_combo.agent_training import relative_rise

    steps = np.arange(250, 15001, 250)
    # Q behind a soft target: 100 (1 - exp(-t tau (1 - gamma))), at tau 0.005 (still climbing at 15k) and 0.02.
    slow, fast = ([(int(s), 100 * (1 - np.exp(-s * tau * 0.01))) for s in steps] for tau in (0.005, 0.02))
    assert 0.12 < relative_rise(slow, 15000) < 0.2
    assert 0 < relative_rise(fast, 15000) < 0.06
    assert relative_rise([(int(s), -3.0) for s in steps], 15000) == 0  # flat, whatever the sign
    assert relative_rise([(15000, 5.0)], 15000) is None  # no point before the last fifth
