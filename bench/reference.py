"""Plain, straightforward versions of latent_combo's networks: the speed references of the benches.

Written the way a first, readable implementation would be, and deliberately independent of latent_combo
(no import of its modules), so that the benches measure latent_combo against a fixed baseline:

* `RefWorldModel`: Dreamer-style world model of the same sizes. One Python loop over time does
  everything per step: conv encoder on that step's frames, GRU step, posterior MLP on concat(h, embed),
  the prior MLP of each of the K heads (one nn.Linear pair per head, called one after the other), the
  KL to each head, the transposed-conv decoder and the reward MLP. Loss: the same Gaussian ELBO as
  latent_combo's WorldModel.loss (unit-variance image and reward log-likelihoods, plain KL averaged over
  the heads).
* `RefAgent`: SAC with two separate critic MLPs (nn.Sequential, ReLU), a tanh-Gaussian actor, and,
  optionally, the CQL(H) penalty as the CQL reference code (github.com/aviralkumar2907/CQL, sac/cql.py)
  computes it: over the whole batch, 10 uniform actions, 10 policy actions at s and 10 policy actions
  sampled at s' (3 sources), each critic evaluated on its own, states repeated once per action.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------------------
# World model
# ---------------------------------------------------------------------------------------------------


class RefEncoder(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, depth, 4, 2), nn.ELU(),
            nn.Conv2d(depth, 2 * depth, 4, 2), nn.ELU(),
            nn.Conv2d(2 * depth, 4 * depth, 4, 2), nn.ELU(),
            nn.Conv2d(4 * depth, 8 * depth, 4, 2), nn.ELU(),
            nn.Flatten(),
        )

    def forward(self, x):
        return self.net(x)


class RefDecoder(nn.Module):
    def __init__(self, feat_dim: int, depth: int):
        super().__init__()
        self.fc = nn.Linear(feat_dim, 32 * depth)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * depth, 4 * depth, 5, 2), nn.ELU(),
            nn.ConvTranspose2d(4 * depth, 2 * depth, 5, 2), nn.ELU(),
            nn.ConvTranspose2d(2 * depth, depth, 6, 2), nn.ELU(),
            nn.ConvTranspose2d(depth, 3, 6, 2),
        )

    def forward(self, feat):
        x = self.fc(feat)
        return self.net(x.view(x.shape[0], -1, 1, 1))


class RefWorldModel(nn.Module):
    def __init__(self, action_dim: int, deter: int = 256, stoch: int = 64, hidden: int = 256, depth: int = 32,
                 ensemble: int = 7, min_std: float = 0.1, kl_free: float = 0.0, kl_scale: float = 1.0,
                 obs_scale: float = 1.0, reward_scale: float = 1.0):
        super().__init__()
        self.deter, self.stoch, self.min_std = deter, stoch, min_std
        self.kl_free, self.kl_scale, self.obs_scale, self.reward_scale = kl_free, kl_scale, obs_scale, reward_scale
        embed, feat = 32 * depth, deter + stoch
        self.encoder = RefEncoder(depth)
        self.decoder = RefDecoder(feat, depth)
        self.img_in = nn.Linear(stoch + action_dim, hidden)
        self.gru = nn.GRUCell(hidden, deter)
        self.posterior = nn.Sequential(nn.Linear(deter + embed, hidden), nn.ELU(), nn.Linear(hidden, 2 * stoch))
        self.priors = nn.ModuleList(
            nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, 2 * stoch)) for _ in range(ensemble))
        self.reward = nn.Sequential(nn.Linear(feat, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                    nn.Linear(hidden, 1))

    def stats(self, x):
        mean, std = torch.chunk(x, 2, dim=-1)
        return mean, F.softplus(std) + self.min_std

    def loss(self, batch: dict):
        """Negative ELBO on a (B, T) batch: image uint8 (B, T, 64, 64, 3), action, reward, is_first."""
        image, action, reward, is_first = batch["image"], batch["action"], batch["reward"], batch["is_first"]
        B, T = reward.shape
        h = torch.zeros(B, self.deter)
        z = torch.zeros(B, self.stoch)
        obs_loss, reward_loss, kl_loss = 0.0, 0.0, 0.0
        for t in range(T):
            x = image[:, t].permute(0, 3, 1, 2).float() / 255.0 - 0.5
            embed = self.encoder(x)
            keep = 1.0 - is_first[:, t].float().unsqueeze(-1)
            h, z = h * keep, z * keep
            h = self.gru(F.elu(self.img_in(torch.cat([z, action[:, t] * keep], -1))), h)
            post_mean, post_std = self.stats(self.posterior(torch.cat([h, embed], -1)))
            z = post_mean + post_std * torch.randn_like(post_std)
            kls = []
            for prior in self.priors:
                prior_mean, prior_std = self.stats(prior(h))
                kls.append(kl_divergence(Normal(post_mean, post_std), Normal(prior_mean, prior_std)).sum(-1))
            kl = torch.stack(kls)  # (K, B)
            if self.kl_free > 0:
                kl = torch.clamp(kl, min=self.kl_free)
            kl_loss = kl_loss + kl.mean()
            feat = torch.cat([h, z], -1)
            recon = self.decoder(feat)
            obs_loss = obs_loss + 0.5 * ((recon - x) ** 2).sum((1, 2, 3)).mean()
            reward_loss = reward_loss + 0.5 * ((self.reward(feat).squeeze(-1) - reward[:, t]) ** 2).mean()
        obs_loss, reward_loss, kl_loss = obs_loss / T, reward_loss / T, kl_loss / T
        total = self.obs_scale * obs_loss + self.reward_scale * reward_loss + self.kl_scale * kl_loss
        return total, {"obs": obs_loss.item(), "reward": reward_loss.item(), "kl": kl_loss.item()}


class RefWorldModelTrainer:
    """One update = loss, backward, gradient clipping, Adam step (as latent_combo's training loop)."""

    def __init__(self, model: RefWorldModel, lr: float = 6e-4, grad_clip: float = 100.0):
        self.model, self.grad_clip = model, grad_clip
        self.opt = torch.optim.Adam(model.parameters(), lr, eps=1e-5)

    def update(self, batch: dict) -> dict:
        loss, metrics = self.model.loss(batch)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return metrics


# ---------------------------------------------------------------------------------------------------
# Agent
# ---------------------------------------------------------------------------------------------------


def ref_mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class RefActor(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256):
        super().__init__()
        self.net = ref_mlp(state_dim, hidden, 2 * action_dim)

    def sample(self, state):
        mu, log_std = torch.chunk(self.net(state), 2, dim=-1)
        log_std = torch.clamp(log_std, -5.0, 2.0)
        dist = Normal(mu, log_std.exp())
        u = dist.rsample()
        a = torch.tanh(u)
        logp = dist.log_prob(u).sum(-1) - torch.log(1 - a ** 2 + 1e-6).sum(-1)
        return a, logp


class RefAgent:
    """SAC (+ optional CQL(H) penalty) with two separate critics, updated one after the other."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, penalty: bool = False,
                 num_actions: int = 10, beta: float = 1.0, gamma: float = 0.99, tau: float = 0.005,
                 actor_lr: float = 1e-4, critic_lr: float = 3e-4, init_alpha: float = 0.1):
        self.action_dim, self.penalty, self.num_actions, self.beta = action_dim, penalty, num_actions, beta
        self.gamma, self.tau = gamma, tau
        self.actor = RefActor(state_dim, action_dim, hidden)
        self.q1 = ref_mlp(state_dim + action_dim, hidden, 1)
        self.q2 = ref_mlp(state_dim + action_dim, hidden, 1)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.tensor(math.log(init_alpha), requires_grad=True)
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), actor_lr)
        self.q1_opt = torch.optim.Adam(self.q1.parameters(), critic_lr)
        self.q2_opt = torch.optim.Adam(self.q2.parameters(), critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], actor_lr)

    @staticmethod
    def q(net, state, action):
        return net(torch.cat([state, action], -1)).squeeze(-1)

    def q_repeated(self, net, state, actions):
        """Q at `num_actions` actions per state: the states repeated once per action, (B, N)."""
        n = self.num_actions
        state_rep = state.unsqueeze(1).repeat(1, n, 1).view(state.shape[0] * n, state.shape[1])
        return self.q(net, state_rep, actions).view(state.shape[0], n)

    def policy_actions(self, state):
        n = self.num_actions
        state_rep = state.unsqueeze(1).repeat(1, n, 1).view(state.shape[0] * n, state.shape[1])
        a, logp = self.actor.sample(state_rep)
        return a, logp.view(state.shape[0], n)

    def cql_penalty(self, state, next_state, q_data: list):
        n, B = self.num_actions, state.shape[0]
        random_actions = torch.empty(B * n, self.action_dim).uniform_(-1, 1)
        random_density = math.log(0.5 ** self.action_dim)
        with torch.no_grad():
            curr_actions, curr_logp = self.policy_actions(state)
            next_actions, next_logp = self.policy_actions(next_state)
        penalties = []
        for net, q_pred in zip((self.q1, self.q2), q_data):
            q_rand = self.q_repeated(net, state, random_actions)
            q_curr = self.q_repeated(net, state, curr_actions)
            q_next = self.q_repeated(net, state, next_actions)  # as the CQL code: Q(s, a ~ pi(s'))
            cat = torch.cat([q_rand - random_density, q_next - next_logp, q_curr - curr_logp], 1)
            penalties.append(torch.logsumexp(cat, dim=1).mean() - q_pred.mean())
        return penalties

    def update(self, batch: dict) -> dict:
        s, a, r, s2, d = batch["state"], batch["action"], batch["reward"], batch["next_state"], batch["discount"]
        alpha = self.log_alpha.exp().detach()
        # Critics
        with torch.no_grad():
            a2, logp2 = self.actor.sample(s2)
            q_next = torch.min(self.q(self.q1_target, s2, a2), self.q(self.q2_target, s2, a2))
            y = r + self.gamma * d * (q_next - alpha * logp2)
        q1_pred, q2_pred = self.q(self.q1, s, a), self.q(self.q2, s, a)
        q1_loss = 0.5 * ((q1_pred - y) ** 2).mean()
        q2_loss = 0.5 * ((q2_pred - y) ** 2).mean()
        if self.penalty:
            p1, p2 = self.cql_penalty(s, s2, [q1_pred, q2_pred])
            q1_loss = q1_loss + self.beta * p1
            q2_loss = q2_loss + self.beta * p2
        self.q1_opt.zero_grad()
        q1_loss.backward()
        self.q1_opt.step()
        self.q2_opt.zero_grad()
        q2_loss.backward()
        self.q2_opt.step()
        # Actor and temperature
        a_pi, logp = self.actor.sample(s)
        q_pi = torch.min(self.q(self.q1, s, a_pi), self.q(self.q2, s, a_pi))
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        # Targets
        with torch.no_grad():
            for net, target in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.copy_(self.tau * p + (1 - self.tau) * tp)
        return {"q1_loss": q1_loss.item(), "q2_loss": q2_loss.item(), "actor_loss": actor_loss.item()}
