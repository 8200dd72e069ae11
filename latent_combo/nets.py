"""Generic networks shared by the world model, the COMBO agent and the state-based behaviour SAC."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# LayerNorm epsilon of the world model's normalised layers (dreamerv3-torch networks.py uses 1e-3 throughout).
NORM_EPS = 1e-3


def mlp(inp: int, hidden: int, out: int, layers: int = 2, act=nn.ELU, norm: bool = False) -> nn.Sequential:
    """`layers` hidden layers of width `hidden`, then a linear output. `norm`: a LayerNorm after each hidden linear,
    before its activation (dreamerv3-torch networks.py MLP)."""
    mods, d = [], inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), *([nn.LayerNorm(hidden, eps=NORM_EPS)] if norm else []), act()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU cell (dreamerv2/common/nets.py GRUCell with norm; dreamerv3-torch networks.py GRUCell): one
    linear layer maps [x, h] to the pre-activations of the three gates, a LayerNorm normalises all 3 x size of them
    together, then reset r = sigmoid(.), candidate c = tanh(r * .), update u = sigmoid(. + update_bias) and
    h' = u c + (1 - u) h. The bias of -1 starts the cell mostly keeping h: u = sigmoid(-1) = 0.27 at a zero
    pre-activation. Called as nn.GRUCell is: cell(x, h) -> h'."""

    def __init__(self, inp: int, size: int, update_bias: float = -1.0):
        super().__init__()
        self.linear = nn.Linear(inp + size, 3 * size, bias=False)  # the LayerNorm's shift is the bias
        self.norm = nn.LayerNorm(3 * size, eps=NORM_EPS)
        self.update_bias = update_bias

    def gates(self, x: torch.Tensor, h: torch.Tensor):
        """(reset, candidate, update), each (N, size)."""
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        reset = torch.sigmoid(reset)
        return reset, torch.tanh(reset * cand), torch.sigmoid(update + self.update_bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        _, cand, update = self.gates(x, h)
        return update * cand + (1 - update) * h


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) map (dreamerv3-torch networks.py ImgChLayerNorm).
    On a channels_last tensor the (N, H, W, C) view it normalises is contiguous, and the output stays channels_last."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, N, i) -> (K, N, o)."""

    def __init__(self, k: int, inp: int, out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(inp)
        self.weight = nn.Parameter(torch.empty(k, inp, out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, 1, out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim of (K, N, d), each of the K members with its own gain and shift."""

    def __init__(self, k: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, 1, dim))
        self.bias = nn.Parameter(torch.zeros(k, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:], eps=NORM_EPS), self.weight)


class Standardise(nn.Module):
    """(x - mean) / std with the statistics kept as buffers (saved with the weights): identity until `fit`."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, eps: float = 1e-3) -> None:
        """The per-dimension mean and std of `x` (N, dim); `eps` keeps a constant dimension finite (TD3+BC's)."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0) + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CriticEnsemble(nn.Module):
    """Twin (or K) Q-networks evaluated in one batched pass.

    `critic(state (N, S), action (N, A)) -> (K, N)`; with R actions per state, `action (R, N, A)`
    gives (K, R, N) and the state half of the first layer runs once per state, not R times: the
    conservative penalty evaluates 2 x 10 actions per state, so this halves its cost.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, layers: int = 2, k: int = 2,
                 trunk: int = 0, standardise: bool = False):
        super().__init__()
        self.standardise = Standardise(state_dim) if standardise else nn.Identity()
        # `trunk` > 0: the state first goes through Linear + LayerNorm + tanh to `trunk` features, shared by the
        # K critics (DrQ-v2's critic trunk), so that a wide latent (160-320 dims) does not drown the action's
        # few dimensions in the first layer's input.
        self.trunk = nn.Sequential(nn.Linear(state_dim, trunk), nn.LayerNorm(trunk), nn.Tanh()) if trunk else None
        state_dim = trunk or state_dim
        dims = [state_dim + action_dim] + [hidden] * layers + [1]
        self.k, self.state_dim = k, state_dim
        self.layers = nn.ModuleList(EnsembleLinear(k, i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        state = self.standardise(state)
        if self.trunk is not None:
            state = self.trunk(state)
        first = self.layers[0]
        k, hidden = self.k, first.weight.shape[-1]
        # Shared inputs times all K weight matrices as one GEMM: (N, S) @ (S, K*H). (bmm on an
        # expanded, stride-0 batch is several times slower on CPU.)
        w_s = first.weight[:, : self.state_dim].permute(1, 0, 2).reshape(self.state_dim, k * hidden)
        w_a = first.weight[:, self.state_dim:].permute(1, 0, 2).reshape(-1, k * hidden)
        x_s = (state @ w_s).view(-1, k, hidden).transpose(0, 1) + first.bias  # (K, N, H)
        x_a = (action @ w_a).view(*action.shape[:-1], k, hidden)
        if action.dim() == 2:
            x = x_s + x_a.transpose(0, 1)
        else:
            r, n = action.shape[:2]
            x = (x_s.unsqueeze(1) + x_a.permute(2, 0, 1, 3)).reshape(k, r * n, hidden)
        for layer in self.layers[1:]:
            x = layer(F.relu(x))
        x = x.squeeze(-1)
        return x if action.dim() == 2 else x.view(k, r, n)


class TanhGaussianActor(nn.Module):
    """Squashed Gaussian policy: a = tanh(u), u ~ N(mu(s), sigma(s)); log-prob corrected for tanh."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, layers: int = 2, standardise: bool = False):
        super().__init__()
        # Optional input standardisation (TD3+BC and d3rlpy standardise states); Identity keeps checkpoints
        # saved without it (the shipped behaviour policies) loadable.
        self.standardise = Standardise(state_dim) if standardise else nn.Identity()
        self.net = mlp(state_dim, hidden, 2 * action_dim, layers, act=nn.ReLU)
        self.action_dim = action_dim

    def dist(self, state: torch.Tensor):
        mu, log_std = self.net(self.standardise(state)).chunk(2, -1)
        # Soft clamp keeps gradients alive at the bounds (unlike torch.clamp).
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mu, log_std

    def sample(self, state: torch.Tensor, deterministic: bool = False):
        """Returns (action, log_prob); log_prob is None when deterministic."""
        mu, log_std = self.dist(state)
        if deterministic:
            return torch.tanh(mu), None
        return self.draw(mu, log_std)

    @staticmethod
    def draw(mu: torch.Tensor, log_std: torch.Tensor):
        """A reparameterised (action, log_prob) from dist()'s outputs: losses that also need the mean make one
        actor pass, not two."""
        u = mu + log_std.exp() * torch.randn_like(mu)
        return torch.tanh(u), gaussian_tanh_log_prob(u, mu, log_std)

    def log_prob(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of given actions in [-1, 1] (behaviour cloning)."""
        mu, log_std = self.dist(state)
        u = torch.atanh(action.clamp(-0.999, 0.999))
        return gaussian_tanh_log_prob(u, mu, log_std)

    @torch.no_grad()
    def act(self, state, deterministic: bool = True):
        """numpy in, numpy out, for acting in an env."""
        s = torch.as_tensor(state, dtype=torch.float32, device=next(self.parameters()).device)
        a, _ = self.sample(s.unsqueeze(0), deterministic)
        return a[0].cpu().numpy()


def gaussian_tanh_log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(u; mu, sigma) minus the tanh Jacobian, summed over action dims."""
    log_normal = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    # log(1 - tanh(u)^2) written stably: 2 (log 2 - u - softplus(-2u)).
    log_jac = 2 * (math.log(2) - u - F.softplus(-2 * u))
    return (log_normal - log_jac).sum(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)
