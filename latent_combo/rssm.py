"""Recurrent state-space model with an ensemble of prior heads (LOMPO): h_t = GRU(h, z, a); z ~ q or p_k.

The latent state the agent sees is feat = concat(h, z). The posterior q(z | h, embed) filters real
observations; the K prior heads p_k(z | h) share the GRU and are what model rollouts sample from.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from latent_combo.nets import NORM_EPS, EnsembleLayerNorm, EnsembleLinear, LayerNormGRUCell


class RSSM(nn.Module):
    def __init__(self, embed: int, action_dim: int, deter: int = 256, stoch: int = 64, hidden: int = 256,
                 ensemble: int = 7, min_std: float = 0.1, gru_norm: bool = False, norm: bool = False):
        """`gru_norm`: DreamerV2's layer-normalised GRU cell instead of nn.GRUCell; `norm`: a LayerNorm after each
        hidden linear layer (input, posterior and prior MLPs), before its activation (WorldModelConfig)."""
        super().__init__()
        self.deter, self.stoch, self.ensemble, self.min_std = deter, stoch, ensemble, min_std
        self.img_in = nn.Linear(stoch + action_dim, hidden)
        self.gru = LayerNormGRUCell(hidden, deter) if gru_norm else nn.GRUCell(hidden, deter)
        # Posterior input layer split in two so the embed half runs once over all T steps.
        self.post_h = nn.Linear(deter, hidden)
        self.post_e = nn.Linear(embed, hidden, bias=False)
        self.post_out = nn.Linear(hidden, 2 * stoch)
        self.prior_hidden = EnsembleLinear(ensemble, deter, hidden)
        self.prior_out = EnsembleLinear(ensemble, hidden, 2 * stoch)
        # Identity when off: no parameters, so checkpoints without the norm keep their keys.
        self.img_norm = nn.LayerNorm(hidden, eps=NORM_EPS) if norm else nn.Identity()
        self.post_norm = nn.LayerNorm(hidden, eps=NORM_EPS) if norm else nn.Identity()
        self.prior_norm = EnsembleLayerNorm(ensemble, hidden) if norm else nn.Identity()

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch

    def initial(self, batch: int, device=None) -> dict:
        """The reset state: zero h and z (masked in whenever is_first is set)."""
        z = torch.zeros(batch, self.stoch, device=device)
        return {"h": torch.zeros(batch, self.deter, device=device), "z": z}

    def _stats(self, x: torch.Tensor):
        mean, std = x.chunk(2, -1)
        return mean, F.softplus(std) + self.min_std

    def _step_h(self, state: dict, action: torch.Tensor) -> torch.Tensor:
        x = F.elu(self.img_norm(self.img_in(torch.cat([state["z"], action], -1))))
        return self.gru(x, state["h"])

    def prior_stats(self, h: torch.Tensor, head: int | None = None):
        """Mean and std of every prior head, shape (K, N, stoch); or of one head, (N, stoch)."""
        flat = h.reshape(-1, self.deter)
        x = F.elu(self.prior_norm(self.prior_hidden(flat.unsqueeze(0).expand(self.ensemble, -1, -1))))
        mean, std = self._stats(self.prior_out(x))
        shape = (self.ensemble, *h.shape[:-1], self.stoch)
        mean, std = mean.reshape(shape), std.reshape(shape)
        return (mean, std) if head is None else (mean[head], std[head])

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, state=None):
        """Filter a (B, T) sequence with the posterior. Returns dict of (B, T, ...) tensors:
        h, z (posterior sample), post_mean, post_std, feat."""
        B, T = embed.shape[:2]
        state = state or self.initial(B, embed.device)
        keep = (~is_first).float().unsqueeze(-1)
        post_e = self.post_e(embed)  # all T at once
        hs, zs, means, stds = [], [], [], []
        for t in range(T):
            # Reset at episode starts by masking, so windows may span resets (dreamerv3 rssm.py).
            state = {k: v * keep[:, t] for k, v in state.items()}
            h = self._step_h(state, action[:, t] * keep[:, t])
            mean, std = self._stats(self.post_out(F.elu(self.post_norm(self.post_h(h) + post_e[:, t]))))
            z = mean + std * torch.randn_like(std)
            state = {"h": h, "z": z}
            hs.append(h)
            zs.append(z)
            means.append(mean)
            stds.append(std)
        out = {k: torch.stack(v, 1) for k, v in
               {"h": hs, "z": zs, "post_mean": means, "post_std": stds}.items()}
        out["feat"] = torch.cat([out["h"], out["z"]], -1)
        return out

    def img_step(self, state: dict, action: torch.Tensor, head: int | torch.Tensor):
        """One prior step from `state` with `action` using prior head `head` (an int, or one per row)."""
        h = self._step_h(state, action)
        mean, std = self.prior_stats(h)  # (K, N, stoch)
        if isinstance(head, int):
            mean, std = mean[head], std[head]
        else:
            rows = torch.arange(h.shape[0], device=h.device)
            mean, std = mean[head, rows], std[head, rows]
        z = mean + std * torch.randn_like(std)
        return {"h": h, "z": z}

    def imagine(self, start: dict, horizon: int, actions=None, policy=None, head=None, generator=None):
        """Roll the prior `horizon` steps from `start` ({h, z}, (N, .)), with given actions (N, H, A)
        or a `policy(feat) -> action`. `head=None` draws a random prior head per step (and per row).
        Returns feats (N, H, F) of the states reached and the actions taken (N, H, A)."""
        state, feats, acts = start, [], []
        for t in range(horizon):
            feat = torch.cat([state["h"], state["z"]], -1)
            a = actions[:, t] if actions is not None else policy(feat)
            k = head if head is not None else torch.randint(
                self.ensemble, (feat.shape[0],), device=feat.device, generator=generator)
            state = self.img_step(state, a, k)
            feats.append(torch.cat([state["h"], state["z"]], -1))
            acts.append(a)
        return torch.stack(feats, 1), torch.stack(acts, 1)

    def split(self, feat: torch.Tensor) -> dict:
        return {"h": feat[..., :self.deter], "z": feat[..., self.deter:]}

    def kl_loss(self, post: dict, free: float, balance: float | None, free_mode: str = "step",
                split: tuple[float, float] | None = None):
        """Mean over heads of KL(q || p_k), each head trained on it. `balance=None` is the plain KL
        (LOMPO); a number a is Dreamer-v2 balancing, a KL(sg(q) || p) + (1 - a) KL(q || sg(p)), same
        value, gradients split between prior and posterior. `split=(dyn, rep)` is DreamerV3's loss instead,
        dyn * KL(sg(q) || p) + rep * KL(q || sg(p)), each term clipped below at the free nats on its own (and
        `balance` ignored). `free` nats are not penalised, per step or on the batch mean (`free_nats`).
        Returns (loss, kl per head (K,))."""
        stats = (post["post_mean"], post["post_std"], *self.prior_stats(post["h"]))  # (B, T, S), (K, B, T, S)
        if post["h"].device.type == "cpu":  # CPU autocast leaves log and sum in bf16 (CUDA's runs them in fp32)
            stats = tuple(x.float() for x in stats)  # a no-op in fp32
        q_m, q_s, p_mean, p_std = stats

        def kl(q_m, q_s, p_m, p_s):
            return kl_divergence(Normal(q_m, q_s), Normal(p_m, p_s)).sum(-1)  # (K, B, T)

        value = kl(q_m, q_s, p_m=p_mean, p_s=p_std)
        if split is None and balance is None:
            return free_nats(value, free, free_mode), value.mean((1, 2)).detach()
        to_prior = kl(q_m.detach(), q_s.detach(), p_mean, p_std)
        to_post = kl(q_m, q_s, p_mean.detach(), p_std.detach())
        if split is not None:
            loss = split[0] * free_nats(to_prior, free, free_mode) + split[1] * free_nats(to_post, free, free_mode)
        else:
            loss = free_nats(balance * to_prior + (1 - balance) * to_post, free, free_mode)
        return loss, value.mean((1, 2)).detach()

    def head_log_probs(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_k(z | h) for every head k: (K, N). LOMPO's disagreement is their std over k."""
        mean, std = self.prior_stats(h)
        return Normal(mean, std).log_prob(z.unsqueeze(0)).sum(-1)


def free_nats(kl: torch.Tensor, free: float, mode: str = "step") -> torch.Tensor:
    """The mean of a (K, B, T) KL with `free` nats not penalised. 'step': each step's KL clipped below at `free`
    (DreamerV3); 'batch': each head's mean over the batch clipped (DreamerV2's free_avg, as its dmc_vision config
    runs it). Below the free nats the term has no gradient."""
    if mode == "batch":
        return torch.clamp(kl.mean((1, 2)), min=free).mean() if free > 0 else kl.mean()
    return (torch.clamp(kl, min=free) if free > 0 else kl).mean()
