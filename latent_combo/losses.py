"""Actor-critic losses as pure functions: tensors and modules in, (scalar, metrics) out.

Metrics are detached 0-d tensors, not floats: reading a value forces a host-device sync, so the
training loops read them only on log steps (utils.synced).

Shared by the latent COMBO agent (and its baselines) and the state-based behaviour SAC.
Notation follows the COMBO paper, Section 3: eq. 2 (critic) and eq. 3 (actor).
"""

from __future__ import annotations

import math

import torch

from latent_combo.nets import gaussian_tanh_log_prob


def bellman_loss(critic, target_critic, actor, alpha, batch: dict, gamma: float, entropy_backup: bool = True):
    """E_{d_f}[(Q(s,a) - (r + gamma * disc * (min_k Q'(s',a') - alpha log pi(a'|s'))))^2] summed over the critics,
    without the alpha log pi term when not `entropy_backup`. Returns (loss, metrics, Q(s,a) of shape (K, N)).

    The full squared error, as the CQL and COMBO authors' code and OfflineRL-Kit compute it (eq. 2 prints 1/2): the
    penalty weight beta then sits on their scale, so the paper's grid {0.5, 1, 5} means here what it means there.

    `batch` holds state, action, reward, discount, next_state, already mixed from real and model
    data with the fraction f by the caller (eq. 2's d_f).
    """
    with torch.no_grad():
        next_action, next_logp = actor.sample(batch["next_state"])
        next_q = target_critic(batch["next_state"], next_action).min(0).values
        if entropy_backup:
            next_q = next_q - alpha * next_logp
        target = batch["reward"] + gamma * batch["discount"] * next_q
    q = critic(batch["state"], batch["action"])  # (K, N)
    loss = ((q - target) ** 2).mean(1).sum()
    metrics = {"q_mean": q.detach().mean(), "td_target": target.mean(), "bellman": loss.detach()}
    return loss, metrics, q


def conservative_penalty(critic, actor, push_down_states, data_states, data_actions,
                         form: str = "logsumexp", num_actions: int = 10, q_data=None, grad: str = "exact"):
    """E_{s~rho, a~pi}[Q(s,a)] - E_{(s,a)~D}[Q(s,a)]: the bracket of eq. 2, summed over critics.

    Q is pushed down on `push_down_states` (model-rollout states for COMBO, dataset states for CQL)
    and pushed up on dataset pairs only. `form="policy"` is eq. 2 as written (Q at policy actions);
    `form="logsumexp"` is CQL(H)'s practical soft-maximum over N uniform and N policy actions with
    importance weights, which pushes down the highest Q among many actions rather than one sample.
    `q_data` (K, n) may pass in Q(data_states, data_actions) already computed with grad (the Bellman
    term's real rows) to save a critic pass.

    `grad="sampled"` (logsumexp form only) keeps the value and the expected gradient and cuts the cost: the
    soft maximum's gradient is sum_i w_i grad Q(s, a_i) with w the softmax weights, so the 2N actions are
    evaluated without a graph and one action per state and critic, drawn from w, is evaluated again with
    one (an unbiased estimate of the same gradient; w is nearly one-hot once Q separates the actions).
    """
    if grad not in ("exact", "sampled"):
        raise ValueError(f"penalty grad {grad!r}: expected 'exact' or 'sampled'")
    a_dim = data_actions.shape[-1]
    if form == "policy":
        with torch.no_grad():
            a_pi, _ = actor.sample(push_down_states)
        pushed_down = critic(push_down_states, a_pi).mean(1)  # (K,)
        q_rho = pushed_down.detach()
    elif form == "logsumexp" and grad == "sampled":
        pushed_down, q_rho = _sampled_soft_max(critic, actor, push_down_states, a_dim, num_actions)
    elif form == "logsumexp":
        actions, log_proposal = _proposal_actions(actor, push_down_states, a_dim, num_actions)
        q = critic(push_down_states, actions)  # (K, 2N_a, n)
        q_rho = q[:, 0].detach().mean(1)  # Q at one policy sample per state, for the log
        # Importance weights: divide by the proposal densities, average over the 2 N_a samples.
        pushed_down = (torch.logsumexp(q - log_proposal, 1) - math.log(2 * num_actions)).mean(1)
    else:
        raise ValueError(f"penalty form {form!r}: expected 'logsumexp' or 'policy'")
    pushed_up = (critic(data_states, data_actions) if q_data is None else q_data).mean(1)
    penalty = (pushed_down - pushed_up).sum()
    # The regulariser E_rho[Q] - E_D[Q] drives offline hyperparameter selection; logged in the plain
    # form of eq. 2 whichever form is optimised, so runs are comparable.
    return penalty, {"penalty": penalty.detach(), "q_rho": q_rho.mean(), "q_data": pushed_up.detach().mean(),
                     "regulariser": (q_rho - pushed_up.detach()).mean()}


def _proposal_actions(actor, states, a_dim: int, num_actions: int):
    """N policy and N uniform actions per state, (2N, n, A), with their log proposal densities (2N, n)."""
    with torch.no_grad():
        # The policy's mean and std depend on the state only: one actor pass, N_a draws.
        mu, log_std = actor.dist(states)
        u = mu + log_std.exp() * torch.randn(num_actions, *mu.shape, device=mu.device)
        a_unif = torch.rand(num_actions, *mu.shape, device=mu.device) * 2 - 1
        log_unif = torch.full(a_unif.shape[:2], a_dim * math.log(0.5), device=mu.device)  # U[-1,1]^A
        return (torch.cat([torch.tanh(u), a_unif]),
                torch.cat([gaussian_tanh_log_prob(u, mu, log_std), log_unif]))


def _sampled_soft_max(critic, actor, states, a_dim: int, num_actions: int):
    """The logsumexp form's pushed-down term (K,) with its gradient through one action per state and critic,
    drawn from the softmax weights (conservative_penalty's grad="sampled"); and Q at one policy action (K,)."""
    actions, log_proposal = _proposal_actions(actor, states, a_dim, num_actions)
    k, n = critic.k, states.shape[0]
    with torch.no_grad():
        weighted = critic(states, actions) - log_proposal  # (K, 2N, n)
        soft_max = torch.logsumexp(weighted, 1) - math.log(2 * num_actions)  # (K, n)
        pick = torch.distributions.Categorical(logits=weighted.transpose(1, 2)).sample()  # (K, n)
        chosen = actions[pick, torch.arange(n, device=states.device)]  # (K, n, A): critic k's draw
        q_rho = weighted[:, 0] + log_proposal[0]  # Q at the first policy draw, for the log
    # Every critic on every critic's draw, then each its own: K x n rows instead of 2N x n.
    diagonal = torch.arange(k, device=states.device)
    q_chosen = critic(states, chosen)[diagonal, diagonal]  # (K, n)
    pushed_down = (soft_max + q_chosen - q_chosen.detach()).mean(1)
    return pushed_down, q_rho.mean(1)


def actor_loss(actor, critic, alpha, states, td3bc_alpha: float = 0.0, data_actions=None):
    """Eq. 3 with entropy regularisation: maximise E_s[min_k Q(s, a~pi) - alpha log pi(a|s)].

    `td3bc_alpha` > 0 adds TD3+BC's policy constraint (Fujimoto & Gu 2021) with its alpha:
    lambda * E[alpha log pi - Q] + E[squared error of tanh(mu) to `data_actions`], lambda = td3bc_alpha / E|Q|
    (not backpropagated), the error averaged over the action's dimensions. `data_actions` pair with the first rows of
    `states`; the error is summed over those rows and divided by all rows, so that each dataset row weighs in both
    terms as in TD3+BC (rows from model rollouts have no action to imitate and add the Q term only). On dataset rows
    alone and without entropy this is TD3+BC's actor loss; its paper's alpha is 2.5. Normalising by E|Q| keeps the
    pull the same whatever the reward scale or how far Q has risen.
    """
    mu, log_std = actor.dist(states)
    action, logp = actor.draw(mu, log_std)
    q = critic(states, action).min(0).values
    loss = (alpha * logp - q).mean()
    metrics = {"actor": loss.detach(), "entropy": -logp.detach().mean(), "q_policy": q.detach().mean()}
    if td3bc_alpha > 0:
        n_data = len(data_actions)
        squared = (torch.tanh(mu[:n_data]) - data_actions).pow(2).mean(-1)  # (n_data,)
        lam = td3bc_alpha / q.detach().abs().mean().clamp_min(1e-6)
        loss = lam * loss + squared.sum() / len(states)
        metrics["bc_mse"] = squared.detach().mean() * data_actions.shape[-1]  # summed over dims, as BC's
        metrics["td3bc_lambda"] = lam
    return loss, metrics, logp


def alpha_loss(log_alpha, logp, target_entropy: float):
    """Tune alpha so that the policy entropy tracks `target_entropy`."""
    loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
    return loss, {"alpha": log_alpha.detach().exp(), "alpha_loss": loss.detach()}


def bc_loss(actor, states, actions, form: str = "mse"):
    """`mse` (default): squared error of the deterministic action tanh(mu(s)) to the dataset action, summed
    over action dims. `nll`: the tanh-Gaussian likelihood. The likelihood turns clipped behaviour actions
    (at +-1, atanh = 3.8 after the 0.999 clamp) into outliers in the Gaussian's space: its std inflates and
    its mean drifts. On sawyer-door expert pixel latents it fit the first step's all-ones action as (-0.88,
    0.70, 0.33) and opened the door 0 of 20 times; the squared error fits (0.98, 0.99, 1.00), 20 of 20. On
    walker medium-replay state latents the squared error also predicts held-out actions better (MSE 1.25 vs
    1.49), though its policy scores lower there (docs/algorithm.md, "Baselines by one switch")."""
    if form == "nll":
        loss = -actor.log_prob(states, actions).mean()
        return loss, {"bc_nll": loss.detach()}
    if form != "mse":
        raise ValueError(f"bc loss {form!r}: expected 'mse' or 'nll'")
    loss = action_error(actor.dist(states)[0], actions)
    return loss, {"bc_mse": loss.detach()}


def action_error(mu, actions):
    """Squared error of the deterministic action tanh(mu) to `actions`, summed over action dims, mean over rows."""
    return (torch.tanh(mu) - actions).pow(2).sum(-1).mean()


def warm_start_actor_loss(actor, alpha, states, actions, form: str = "mse"):
    """The actor's loss during the BC warm start (agent.bc_warmup): eq. 3 with -Q replaced by the BC loss,
    bc_loss + alpha E[log pi(a~pi|s)]. The entropy term keeps the policy's std where the temperature wants it (the
    squared error alone leaves it untrained, and a collapsed std would make the critic's soft targets
    r - alpha log pi meaningless before the actor ever maximises them)."""
    if form == "mse":  # the mean and the sample from one actor pass
        mu, log_std = actor.dist(states)
        bc = action_error(mu, actions)
        metrics = {"bc_mse": bc.detach()}
        _, logp = actor.draw(mu, log_std)
    else:
        bc, metrics = bc_loss(actor, states, actions, form)
        _, logp = actor.sample(states)
    loss = bc + alpha * logp.mean()
    return loss, {**metrics, "entropy": -logp.detach().mean()}, logp
