"""World model: Encoder -> RSSM -> Decoder + reward head, trained by the ELBO on offline episodes.

`obs="image"` uses Dreamer's conv encoder / transposed-conv decoder on 64x64x3 images;
`obs="state"` swaps in MLPs on the normalised proprioceptive state. Everything else is shared.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latent_combo.nets import ChannelNorm, mlp
from latent_combo.rssm import RSSM


class ConvEncoder(nn.Module):
    """(N, 3, 64, 64) in [-0.5, 0.5] -> (N, 32 * depth): four 4x4 stride-2 convs (Dreamer); `norm`: a channel
    LayerNorm after each conv, before its activation (DreamerV3)."""

    def __init__(self, depth: int = 32, norm: bool = False):
        super().__init__()
        chans = [3, depth, 2 * depth, 4 * depth, 8 * depth]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 4, 2) for i, o in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(ChannelNorm(o) for o in chans[1:]) if norm else None
        self.out_dim = 32 * depth

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = F.elu(x if self.norms is None else self.norms[i](x))
        return x.flatten(1)


class ConvDecoder(nn.Module):
    """feat -> (N, 3, 64, 64) image mean: linear to 1x1, then 5-5-6-6 transposed convs (Dreamer); `norm`: a
    channel LayerNorm after each transposed conv but the output one, before its activation (DreamerV3)."""

    def __init__(self, feat_dim: int, depth: int = 32, norm: bool = False):
        super().__init__()
        self.fc = nn.Linear(feat_dim, 32 * depth)
        chans, kernels = [32 * depth, 4 * depth, 2 * depth, depth, 3], [5, 5, 6, 6]
        self.deconvs = nn.ModuleList(nn.ConvTranspose2d(i, o, k, 2)
                                     for i, o, k in zip(chans[:-1], chans[1:], kernels))
        self.norms = nn.ModuleList(ChannelNorm(o) for o in chans[1:-1]) if norm else None

    def _act(self, x, i: int):
        return F.elu(x if self.norms is None else self.norms[i](x))

    def forward(self, feat):
        # On a 1x1 input the first transposed conv is a plain matmul; as one it runs ~15% faster
        # per update on CPU (same parameters, same outputs).
        first = self.deconvs[0]
        x = self.fc(feat) @ first.weight.flatten(1)
        x = self._act(x.view(-1, *first.weight.shape[1:]) + first.bias.view(1, -1, 1, 1), 0)
        # channels_last (as the weights, see WorldModel): the transposed convs ran ~15% faster on CPU.
        x = x.contiguous(memory_format=torch.channels_last)
        for i, deconv in enumerate(self.deconvs[1:], 1):
            x = deconv(x)
            if i < len(self.deconvs) - 1:
                x = self._act(x, i)
        return x


class WorldModel(nn.Module):
    def __init__(self, cfg, obs: str, action_dim: int, state_dim: int | None = None,
                 state_mean=None, state_std=None):
        super().__init__()
        from latent_combo.config import validate_world_model

        validate_world_model(cfg)
        self.obs, norm = obs, cfg.norm == "layer"
        if obs == "image":
            self.encoder = ConvEncoder(cfg.depth, norm)
            embed = self.encoder.out_dim
        else:
            if state_dim is None:
                raise ValueError("obs='state' needs a dataset with a 'state' key (V-D4RL folders have none)")
            embed = cfg.hidden
            self.encoder = mlp(state_dim, cfg.hidden, embed, 2, norm=norm)
            # Normalising with dataset statistics puts every state dimension on one scale.
            self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32))
            self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32))
        self.rssm = RSSM(embed, action_dim, cfg.deter, cfg.stoch, cfg.hidden, cfg.ensemble, cfg.min_std,
                         gru_norm=cfg.gru_norm, norm=norm)
        feat = self.rssm.feat_dim
        if obs == "image":
            self.decoder = ConvDecoder(feat, cfg.depth, norm).to(memory_format=torch.channels_last)
            self.encoder.to(memory_format=torch.channels_last)
        else:
            self.decoder = mlp(feat, cfg.hidden, state_dim, 2, norm=norm)
        self.reward = mlp(feat, cfg.hidden, 1, 2, norm=norm)
        if cfg.inverse_scale > 0:
            # Inverse dynamics: a_t from the embeddings of frames t-2, t-1, t (the action changes velocities,
            # which take two frame differences to see); it asks the encoder for the joints' configuration.
            self.inverse = mlp(3 * embed, cfg.hidden, action_dim, 2, norm=norm)
        self.cfg = cfg

    # ----- observations -------------------------------------------------------------------------
    def target(self, batch: dict) -> torch.Tensor:
        """The observation the decoder reconstructs, (B, T, ...) float: image in [-0.5, 0.5] CHW or
        normalised state."""
        if self.obs == "image":
            return batch["image"].permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5
        return (batch["state"] - self.state_mean) / self.state_std

    def embed(self, target: torch.Tensor, augment: bool = False) -> torch.Tensor:
        B, T = target.shape[:2]
        x = target.flatten(0, 1)
        if self.obs == "image":
            if augment and self.cfg.augment_shift > 0:
                x = random_shift(x, self.cfg.augment_shift)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x).reshape(B, T, -1)

    def decode(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        out = self.decoder(feat.reshape(-1, feat.shape[-1]))
        return out.reshape(*lead, *out.shape[1:])

    def obs_loss(self, feat: torch.Tensor, target: torch.Tensor, share: float = 1.0) -> torch.Tensor:
        """Observation negative log-likelihood: unit-variance Gaussian, summed over pixels / state dims, averaged over
        the (B, T) frames. `share` < 1 decodes only that share of the frames, drawn at random without replacement
        (torch's generator): their average is an unbiased estimate of the average over all frames."""
        if share < 1.0:
            n = feat.shape[0] * feat.shape[1]
            keep = torch.randperm(n, device=feat.device)[:max(1, round(share * n))]
            feat, target = feat.flatten(0, 1)[keep], target.flatten(0, 1)[keep]
        recon = self.decode(feat)
        obs_dims = tuple(range(feat.dim() - 1, target.dim()))
        return 0.5 * ((recon - target) ** 2).sum(obs_dims).mean()

    # ----- the ELBO -------------------------------------------------------------------------------
    def loss(self, batch: dict):
        """Negative ELBO on a (B, T) batch of tensors. Returns (scalar, metrics, posterior states)."""
        cfg = self.cfg
        target = self.target(batch)
        embed = self.embed(target, augment=True)
        post = self.rssm.observe(embed, batch["action"], batch["is_first"])
        losses = {}
        losses["obs"] = self.obs_loss(post["feat"], target, cfg.decode_share)
        losses["reward"] = 0.5 * ((self.reward(post["feat"]).squeeze(-1) - batch["reward"]) ** 2).mean()
        split = None if cfg.kl_dyn is None else (cfg.kl_dyn, cfg.kl_rep)  # weighted inside: kl_scale is unused
        losses["kl"], kl_per_head = self.rssm.kl_loss(post, cfg.kl_free, cfg.kl_balance, cfg.kl_free_mode, split)
        weights = {"obs": cfg.obs_scale, "reward": cfg.reward_scale, "kl": 1.0 if split else cfg.kl_scale}
        if cfg.inverse_scale > 0:
            losses["inverse"] = inverse_dynamics_loss(self.inverse, embed, batch["action"], batch["is_first"])
            weights["inverse"] = cfg.inverse_scale
        total = sum(weights[k] * v for k, v in losses.items())
        # Detached 0-d tensors: read on log steps only (a read is a host-device sync).
        metrics = {f"wm/{k}": v.detach() for k, v in losses.items()}
        metrics.update({f"wm/kl_head{k}": v for k, v in enumerate(kl_per_head)})
        if split:  # wm/kl is the weighted, clipped loss then; the KL itself beside it
            metrics["wm/kl_value"] = kl_per_head.mean()
        metrics["wm/post_std"] = post["post_std"].detach().mean()
        return total, metrics, post

    # ----- open-loop prediction (TensorBoard report) ----------------------------------------------
    @torch.no_grad()
    def open_loop(self, batch: dict, context: int = 5, head: int = 0):
        """Filter `context` steps, then roll the prior with the real actions. Returns truth, model
        (posterior recon for the context, prior prediction after) as (B, T, ...) in target space,
        and the per-step squared error of the open-loop part."""
        target = self.target(batch)
        post = self.rssm.observe(self.embed(target[:, :context]), batch["action"][:, :context],
                                 batch["is_first"][:, :context])
        start = {"h": post["h"][:, -1], "z": post["z"][:, -1]}
        feats, _ = self.rssm.imagine(start, target.shape[1] - context, actions=batch["action"][:, context:],
                                     head=head)
        model = torch.cat([self.decode(post["feat"]), self.decode(feats)], 1)
        err = ((model - target) ** 2).flatten(2).mean(-1)[:, context:]  # (B, T - context)
        return target, model, err


def inverse_dynamics_loss(head, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
    """1/2 squared error of head(e_{t-2}, e_{t-1}, e_t) against a_t, summed over action dims, on steps whose
    three frames lie in one episode."""
    x = torch.cat([embed[:, :-2], embed[:, 1:-1], embed[:, 2:]], -1)
    valid = (~is_first[:, 1:-1] & ~is_first[:, 2:]).float()
    err = 0.5 * ((head(x) - action[:, 2:]) ** 2).sum(-1)
    return (err * valid).sum() / valid.sum().clamp(min=1)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) -> the same shape, each image shifted by up to `pad` pixels each way (edges replicated)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offset = torch.randint(0, 2 * pad + 1, (n, 2), device=x.device)
    rows = offset[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    cols = offset[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
    frames = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[frames, chans, rows[:, None, :, None], cols[:, None, None, :]]


def state_normaliser(dataset) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    if dataset.state_dim is None:
        return None, None
    s = dataset.arrays["state"]
    return s.mean(0), s.std(0) + 1e-3


class WindowSampler:
    """Training windows as tensors on `device`. On CUDA the dataset's arrays (uint8 frames included,
    about 1.2 GB per 100k 64px frames) live on the GPU and windows are gathered there, so the GPU never
    waits on a host copy; on CPU it is numpy indexing. Either way the rows come from the same numpy
    generator, so the windows are the same on every device."""

    def __init__(self, dataset, keys, device):
        self.dataset, self.keys, self.device = dataset, tuple(keys), torch.device(device)
        self.arrays = None
        if self.device.type == "cuda":
            self.arrays = to_torch({k: dataset.arrays[k] for k in self.keys}, self.device)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict:
        rows = self.dataset.window_rows(batch, length, rng)
        if self.arrays is None:
            return to_torch({k: self.dataset.arrays[k][rows] for k in self.keys}, self.device)
        idx = torch.from_numpy(rows).to(self.device, non_blocking=True)
        return {k: v[idx] for k, v in self.arrays.items()}


def to_torch(batch: dict, device) -> dict:
    """numpy batch -> tensors on device; images stay uint8 until the model converts them."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(device) if v.dtype in (np.uint8, np.bool_) else t.float().to(device)
    return out
