"""Latent transitions: the dataset encoded by the posterior, model rollouts from it, and their buffers."""

from __future__ import annotations

import numpy as np
import torch

from latent_combo.world_model import to_torch

KEYS = ("state", "action", "reward", "next_state", "discount")


def padded_episodes(eps: list[dict], keys, device) -> dict[str, torch.Tensor]:
    """Whole episodes as one (B, T_max) batch of tensors, each padded at its end by repeating its last row:
    the filter runs forward in time, so padding never influences the earlier, real steps."""
    n = max(len(e["reward"]) for e in eps)
    return to_torch({k: np.stack([np.concatenate([e[k], np.repeat(e[k][-1:], n - len(e[k]), 0)]) for e in eps])
                     for k in keys}, device)


@torch.no_grad()
def encode_dataset(wm, dataset, device, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Filter every episode with the posterior (no grad, `chunk` episodes at a time) into real latent
    transitions (s_t, a_{t+1}, r_{t+1}, s_{t+1}, discount) with s = concat(h, z); CPU tensors."""
    wm.eval()
    parts = {k: [] for k in KEYS}
    for lo in range(0, len(dataset), chunk):
        eps = [dataset.episode(i) for i in range(lo, min(lo + chunk, len(dataset)))]
        b = padded_episodes(eps, (wm.obs, "action", "reward", "discount", "is_first", "is_terminal"), device)
        feats = wm.rssm.observe(wm.embed(wm.target(b)), b["action"], b["is_first"])["feat"]
        for j, e in enumerate(eps):
            t = len(e["reward"])
            f = feats[j, :t].cpu()
            parts["state"].append(f[:-1])
            parts["next_state"].append(f[1:])
            parts["action"].append(b["action"][j, 1:t].cpu())
            parts["reward"].append(b["reward"][j, 1:t].cpu())
            # Time-limit ends keep bootstrapping; only a true terminal stops it.
            parts["discount"].append(b["discount"][j, 1:t].cpu() * (~b["is_terminal"][j, 1:t]).float().cpu())
    wm.train()
    return {k: torch.cat(v) for k, v in parts.items()}


class TransitionBuffer:
    """Transitions as tensors on the training device; FIFO once full; uniform sampling. Each row keeps the update
    step it was added at, so a model buffer can say how stale its rollouts are (mean_age)."""

    def __init__(self, capacity: int, feat_dim: int, action_dim: int, device):
        shapes = {"state": (feat_dim,), "action": (action_dim,), "reward": (), "next_state": (feat_dim,),
                  "discount": ()}
        self.data = {k: torch.zeros((capacity, *s), device=device) for k, s in shapes.items()}
        self.added_at = torch.zeros(capacity, dtype=torch.long)
        self.capacity, self.size, self.pos = capacity, 0, 0

    @classmethod
    def from_transitions(cls, transitions: dict, device):
        n = len(transitions["reward"])
        buf = cls(n, transitions["state"].shape[1], transitions["action"].shape[1], device)
        buf.add(transitions)
        return buf

    def add(self, batch: dict, step: int = 0) -> None:
        n = len(batch["reward"])
        idx = (self.pos + torch.arange(n)) % self.capacity
        for k in KEYS:
            self.data[k][idx.to(self.data[k].device)] = batch[k].to(self.data[k].device)
        self.added_at[idx] = step
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int) -> dict:
        idx = torch.randint(self.size, (n,), device=self.data["reward"].device)
        return {k: v[idx] for k, v in self.data.items()}

    def mean_age(self, step: int) -> float:
        """Mean number of updates since the filled rows were added (kept on the host: no device sync)."""
        return float(step - self.added_at[: self.size].double().mean()) if self.size else 0.0

    def state_dict(self) -> dict:
        return {"data": {k: v[: self.capacity].cpu() for k, v in self.data.items()}, "size": self.size,
                "pos": self.pos, "added_at": self.added_at.clone()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["data"].items():
            self.data[k].copy_(v)
        self.size, self.pos = state["size"], state["pos"]
        if "added_at" in state:  # checkpoints from before it was kept read as added at step 0
            self.added_at.copy_(state["added_at"])


@torch.no_grad()
def rollout(wm, actor, start: torch.Tensor, horizon: int, lompo_lambda: float = 0.0) -> dict:
    """h-step model rollouts from real latent states with the current policy and a random prior head
    per step; reward from the reward head. `lompo_lambda` > 0 subtracts lambda times the std over
    heads of log p_k(z'|h') (LOMPO's uncertainty penalty). Returns flat transitions."""
    rssm = wm.rssm
    policy = lambda feat: actor.sample(feat)[0]
    feats, actions = rssm.imagine(rssm.split(start), horizon, policy=policy)
    states = torch.cat([start.unsqueeze(1), feats[:, :-1]], 1)
    reward = wm.reward(feats).squeeze(-1)
    metrics = {"rollout/reward": reward.mean().item()}
    if lompo_lambda > 0:
        nxt = rssm.split(feats.reshape(-1, feats.shape[-1]))
        disagreement = rssm.head_log_probs(nxt["h"], nxt["z"]).std(0).reshape(reward.shape)
        reward = reward - lompo_lambda * disagreement
        metrics["rollout/disagreement"] = disagreement.mean().item()
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    out = {"state": flat(states), "action": flat(actions), "reward": flat(reward), "next_state": flat(feats),
           "discount": torch.ones(reward.numel(), device=reward.device)}
    return out, metrics
