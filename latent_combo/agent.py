"""The latent actor-critic: COMBO and, by one switch, the paper's Table 2 baselines.

    combo  Bellman on f*real + (1-f)*model data, Q pushed down on model-rollout states, up on dataset pairs
    lompo  Bellman on the same mixture, no critic penalty; rollout reward minus lambda * head disagreement
    lmbpo  Bellman on the same mixture, no penalty of any kind
    cql    f = 1 (no rollouts), Q pushed down on dataset states, up on dataset pairs
    bc     the dataset's actions regressed (agent.bc_loss: squared error, or the likelihood), no critic
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from latent_combo import losses
from latent_combo.nets import CriticEnsemble, TanhGaussianActor, soft_update

USES_ROLLOUTS = {"combo": True, "lompo": True, "lmbpo": True, "cql": False, "bc": False}
USES_PENALTY = {"combo": True, "cql": True, "lompo": False, "lmbpo": False, "bc": False}


class Agent(nn.Module):
    def __init__(self, cfg, algo: str, feat_dim: int, action_dim: int):
        super().__init__()
        self.cfg, self.algo = cfg, algo
        self.actor = TanhGaussianActor(feat_dim, action_dim, cfg.hidden, cfg.layers, standardise=cfg.standardise)
        self.critic = CriticEnsemble(feat_dim, action_dim, cfg.hidden, cfg.layers, k=2, trunk=cfg.critic_trunk,
                                     standardise=cfg.standardise)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_alpha))))
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], cfg.actor_lr)
        self.tunes_beta = cfg.target_gap is not None and USES_PENALTY[algo]
        if self.tunes_beta:
            self.log_beta = nn.Parameter(torch.tensor(float(np.log(cfg.beta))))
            self.beta_opt = torch.optim.Adam([self.log_beta], cfg.beta_lr)

    def fit_standardiser(self, states: torch.Tensor) -> None:
        """agent.standardise: the actor's and critics' input statistics from the real transitions' states."""
        if self.cfg.standardise:
            for net in (self.actor, self.critic, self.target_critic):
                net.standardise.fit(states)

    # log beta is kept within +-7 (beta in [1e-3, 1e3]): a long stretch of one-signed regulariser cannot run it off.
    LOG_BETA_BOUND = 7.0

    def _tuned_beta(self) -> torch.Tensor:
        return self.log_beta.clamp(-self.LOG_BETA_BOUND, self.LOG_BETA_BOUND).exp()

    @property
    def beta(self) -> torch.Tensor | float:
        return self._tuned_beta().detach() if self.tunes_beta else self.cfg.beta

    @property
    def uses_rollouts(self) -> bool:
        return USES_ROLLOUTS[self.algo]

    @property
    def real_ratio(self) -> float:
        """f of eq. 2; algorithms without rollouts train on real data only."""
        return self.cfg.real_ratio if self.uses_rollouts else 1.0

    def update_critic(self, real: dict, model: dict | None):
        """One critic step on eq. 2: Bellman error on the f-mixture plus beta * regulariser."""
        mixed = real if model is None else {k: torch.cat([real[k], model[k]]) for k in real}
        alpha = self.log_alpha.exp().detach()
        loss, metrics, q = losses.bellman_loss(self.critic, self.target_critic, self.actor, alpha, mixed,
                                               self.cfg.gamma, self.cfg.entropy_backup)
        if USES_PENALTY[self.algo]:
            # COMBO pushes down on model-rollout states (plus dataset states with `rho_dataset`, which
            # the paper's practical version does for stability); CQL, without a model, on dataset states.
            # Q is pushed up on the dataset pairs: the real rows, which come first in the mixed batch.
            if self.algo != "combo":
                push_down = real["state"]
            elif self.cfg.rho_dataset:
                push_down = torch.cat([model["state"], real["state"]])
            else:
                push_down = model["state"]
            penalty, pm = losses.conservative_penalty(self.critic, self.actor, push_down, real["state"],
                                                      real["action"], self.cfg.penalty_form,
                                                      self.cfg.penalty_actions, q_data=q[:, :len(real["state"])],
                                                      grad=self.cfg.penalty_grad)
            loss = loss + self.beta * penalty
            metrics.update(pm)
            if self.tunes_beta:
                metrics.update(self.update_beta(pm["regulariser"]))
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        soft_update(self.target_critic, self.critic, self.cfg.tau)
        metrics["critic_loss"] = loss.detach()
        return metrics

    def update_actor(self, states: torch.Tensor, data_actions: torch.Tensor | None = None):
        """Eq. 3 on states from the dataset (first, paired with `data_actions`) and rollouts, with agent.td3bc_alpha's
        constraint, then the entropy temperature."""
        # The critic's weight gradients from the actor loss would be thrown away: skip computing them.
        self.critic.requires_grad_(False)
        loss, metrics, logp = losses.actor_loss(self.actor, self.critic, self.log_alpha.exp().detach(), states,
                                                self.cfg.td3bc_alpha, data_actions)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)
        return {**metrics, **self.update_alpha(logp)}

    def update_beta(self, regulariser: torch.Tensor) -> dict:
        """Dual ascent on beta: up while the regulariser is above agent.target_gap, down while below."""
        loss = -self._tuned_beta() * (regulariser.detach() - self.cfg.target_gap)
        self.beta_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.beta_opt.step()
        return {"beta": self.beta}

    def warm_start_actor(self, real: dict) -> dict:
        """The BC warm start's actor step (losses.warm_start_actor_loss) on dataset pairs, then the temperature."""
        loss, metrics, logp = losses.warm_start_actor_loss(self.actor, self.log_alpha.exp().detach(), real["state"],
                                                           real["action"], self.cfg.bc_loss)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {**metrics, **self.update_alpha(logp)}

    def update_alpha(self, logp: torch.Tensor) -> dict:
        a_loss, am = losses.alpha_loss(self.log_alpha, logp, self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.alpha_opt.step()
        return am

    def update_bc(self, real: dict):
        loss, metrics = losses.bc_loss(self.actor, real["state"], real["action"], self.cfg.bc_loss)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return metrics

    def update(self, real: dict, model: dict | None, bc_actor: bool = False) -> dict:
        """One update. `bc_actor` (the warm start, agent.bc_warmup): the critic's step as usual, the actor's on
        the BC loss plus the entropy term, then the temperature."""
        if self.algo == "bc":
            return self.update_bc(real)
        metrics = self.update_critic(real, model)
        if bc_actor:
            metrics.update(self.warm_start_actor(real))
            return metrics
        states = real["state"] if model is None else torch.cat([real["state"], model["state"]])
        metrics.update(self.update_actor(states, real["action"]))
        return metrics

    def optimisers(self) -> dict:
        opts = {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}
        return {**opts, "beta_opt": self.beta_opt} if self.tunes_beta else opts
