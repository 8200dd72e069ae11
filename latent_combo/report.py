"""TensorBoard helpers: scalars by prefix, truth / model / error grids, evaluation strips."""

from __future__ import annotations

import numpy as np
import torch


def log_scalars(writer, metrics: dict, step: int, prefix: str = "") -> None:
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and np.isfinite(v):
            writer.add_scalar(f"{prefix}{k}", v, step)


def open_loop_grid(truth: torch.Tensor, model: torch.Tensor, every: int = 2) -> np.ndarray:
    """(B, T, 3, H, W) images in [-0.5, 0.5] -> one HWC uint8 grid: per sequence three rows
    (truth, model, |error|), time along the columns (every `every`-th frame)."""
    truth, model = truth[:, ::every].clamp(-0.5, 0.5) + 0.5, model[:, ::every].clamp(-0.5, 0.5) + 0.5
    err = (model - truth).abs()
    rows = torch.stack([truth, model, err], 1)  # (B, 3, T, C, H, W)
    B, R, T, C, H, W = rows.shape
    grid = rows.permute(0, 1, 4, 2, 5, 3).reshape(B * R * H, T * W, C)
    return (grid.cpu().numpy() * 255).astype(np.uint8)


def frame_strip(frames: list, every: int = 10, limit: int = 25) -> np.ndarray:
    """Evaluation frames side by side (every `every`-th, at most `limit`) as one HWC image."""
    picked = frames[::every][:limit]
    return np.concatenate(picked, 1) if picked else np.zeros((64, 64, 3), np.uint8)


def state_plot_grid(truth: torch.Tensor, model: torch.Tensor, size: int = 64) -> np.ndarray:
    """State mode: (B, T, D) normalised states drawn as heat-map rows (truth, model, error) per sequence."""
    t, m = truth[:4], model[:4]
    rows = torch.cat([t, m, (m - t).abs()], 1)  # (B, 3T, D) ... stacked by sequence
    x = rows.reshape(-1, rows.shape[-1]).T  # (D, B*3T)
    x = ((x.clamp(-3, 3) + 3) / 6 * 255).byte().cpu().numpy()
    return np.repeat(np.repeat(x, 4, 0), 2, 1)[..., None].repeat(3, -1)
