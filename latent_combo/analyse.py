"""Does the model's uncertainty predict its error? The paper's Fig. 2, for our latent world model.

Model rollouts start from filtered (posterior) dataset states and follow the dataset's own actions, a random
prior head per step as the agent's rollouts do. At every step two uncertainty estimates are set against the
true error of the prediction:
- uncertainty: LOMPO's (std over the K prior heads of log p_k(z | h) of the predicted z) and MOPO's
  "Max Var" (max over heads of the Frobenius norm of the head's diagonal covariance, sqrt(sum sigma^4));
- error: in reward, the reward head's prediction at the rollout's (sampled) state, as the agent's rollouts
  use it, against the reward the data received there; in latent space, the distance of the model's point
  prediction (the rollout's h, the heads' mean z) to the posterior feature (mean z) of the real observation
  reached; and in state space, the probe's reading of the prediction against the true state (RMS over
  dimensions in units of each dimension's std), where the dataset stores the state.
Both normalised to [0, 1] over the points; a least-squares line and its R² per (estimate, error) pair.

The reward error also calibrates LOMPO's lambda offline: lambda = E|r_hat - r| / E[u] makes the penalty
lambda * u, on average along these rollouts, as large as the model's own reward error (MOPO's argument: a
penalty that bounds the model's error makes the penalised return a lower bound; here it matches the error
on average rather than bounding it pointwise). No evaluated return is read.
"""

from __future__ import annotations

import numpy as np
import torch

from latent_combo.latent import padded_episodes
from latent_combo.probe import fit_state_probe, varying_dims

ESTIMATES = ("lompo", "maxvar")


@torch.no_grad()
def rollout_points(wm, dataset, device, rng: np.random.Generator, horizon: int, every: int = 10,
                   chunk: int = 32) -> dict:
    """Per rollout step: both uncertainty estimates, the reward and latent errors, the predicted and true features,
    the true state (if stored), and the step index 1..horizon."""
    wm.eval()
    rssm, pts = wm.rssm, {k: [] for k in ("lompo", "maxvar", "reward", "latent", "pred", "post", "state", "step")}
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
    for lo in range(0, len(dataset), chunk):
        eps = [dataset.episode(i) for i in range(lo, min(lo + chunk, len(dataset)))]
        b = padded_episodes(eps, (wm.obs, "action", "reward", "is_first"), device)
        post = rssm.observe(wm.embed(wm.target(b)), b["action"], b["is_first"])
        rows, cols = [], []
        for j, e in enumerate(eps):
            for s in range(0, len(e["reward"]) - 1 - horizon, every):  # start at s, reach s + 1 .. s + horizon
                rows.append(j)
                cols.append(s)
        if not rows:
            continue
        rows, cols = np.array(rows), np.array(cols)
        span = cols[:, None] + np.arange(1, horizon + 1)  # (N, H) the steps reached
        start = {"h": post["h"][rows, cols], "z": post["z"][rows, cols]}
        actions = b["action"][rows[:, None], span]  # row t holds the action that led to observation t
        feats, _ = rssm.imagine(start, horizon, actions=actions, generator=gen)  # (N, H, F)
        split = rssm.split(feats)
        mean, std = rssm.prior_stats(split["h"])  # (K, N, H, S)
        log_p = torch.distributions.Normal(mean, std).log_prob(split["z"].unsqueeze(0)).sum(-1)  # (K, N, H)
        # The real step's posterior with its mean z: the error is the model's, not the posterior's sampling noise.
        truth = torch.cat([post["h"], post["post_mean"]], -1)[rows[:, None], span]
        # The model's point prediction of the state reached: the rollout's h with the heads' mean z. Not the
        # sampled z, whose own noise Max Var (the predicted variance) would predict by construction.
        point = torch.cat([split["h"], mean.mean(0)], -1)
        # The reward at step t is the one received on reaching observation t, predicted from its feature.
        pts["reward"].append((wm.reward(feats).squeeze(-1) - b["reward"][rows[:, None], span]).abs().cpu())
        pts["lompo"].append(log_p.std(0).cpu())
        pts["maxvar"].append(std.pow(4).sum(-1).sqrt().amax(0).cpu())
        pts["latent"].append((point - truth).norm(dim=-1).cpu())
        pts["pred"].append(point.cpu())
        pts["post"].append(truth.cpu())
        pts["step"].append(torch.arange(1, horizon + 1).expand(len(rows), -1))
        if "state" in eps[0]:
            states = np.stack([eps[r]["state"][c + 1:c + 1 + horizon] for r, c in zip(rows, cols)])
            pts["state"].append(torch.as_tensor(states))
    wm.train()
    if not pts["step"]:
        raise ValueError(f"{dataset.directory}: no episode is longer than the horizon {horizon} + 1")
    return {k: torch.cat(v).flatten(0, 1).numpy() for k, v in pts.items() if v}


def unit(v: np.ndarray) -> np.ndarray:
    """Min-max normalised to [0, 1] (zeros for a constant)."""
    v = v.astype(np.float64)
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict:
    """Both normalised to [0, 1]; the least-squares line y = a x + b and its R²."""
    x, y = unit(x), unit(y)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    r2 = 1 - resid.var() / y.var() if y.var() > 0 else 0.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def analyse(wm, dataset, device, horizon: int, seed: int = 0) -> tuple[dict, dict]:
    """The figures (flat dict) and the normalised points for the plot."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        p = rollout_points(wm, dataset, device, rng, horizon)
    errors = {"reward": p["reward"], "latent": p["latent"]}
    if "state" in p:
        # The probe's regression, fitted on the posterior features of the same steps (the points are
        # rollout predictions, not what it was fitted on); errors in units of each dimension's std.
        y = p["state"]
        std, dims = y.std(0), varying_dims(y)
        probe = fit_state_probe(p["post"], y[:, dims])
        errors["state"] = np.sqrt((((probe.predict(p["pred"]) - y[:, dims]) / std[dims]) ** 2).mean(1))
    out = {"horizon": horizon, "points": int(len(p["step"]))}
    for est in ESTIMATES:
        for space, err in errors.items():
            for k, v in linear_fit(p[est], err).items():
                out[f"{est}_vs_{space}_{k}"] = v
        # How the estimate grows with the rollout step (an honest estimate should).
        out[f"{est}_step1_mean"] = float(p[est][p["step"] == 1].mean())
        out[f"{est}_step{horizon}_mean"] = float(p[est][p["step"] == horizon].mean())
    out["lompo_mean"], out["error_reward_mean"] = float(p["lompo"].mean()), float(p["reward"].mean())
    out["lompo_lambda_calibrated"] = out["error_reward_mean"] / max(out["lompo_mean"], 1e-12)
    for space, err in errors.items():
        out[f"error_{space}_step1_mean"] = float(err[p["step"] == 1].mean())
        out[f"error_{space}_step{horizon}_mean"] = float(err[p["step"] == horizon].mean())
    return out, {"step": p["step"], **{e: p[e] for e in ESTIMATES}, **{f"error_{k}": v for k, v in errors.items()}}


def plot(points: dict, figures: dict, title: str, limit: int = 4000, seed: int = 0):
    """A matplotlib figure: one scatter per (estimate, error space), normalised axes, the fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spaces = [k[len("error_"):] for k in points if k.startswith("error_")]
    fig, axes = plt.subplots(len(spaces), len(ESTIMATES), figsize=(4.2 * len(ESTIMATES), 3.8 * len(spaces)),
                             squeeze=False)
    pick = np.random.default_rng(seed).permutation(len(points["step"]))[:limit]
    for i, space in enumerate(spaces):
        for j, est in enumerate(ESTIMATES):
            ax, x, y = axes[i, j], unit(points[est]), unit(points[f"error_{space}"])
            sc = ax.scatter(x[pick], y[pick], c=points["step"][pick], s=3, alpha=0.4, cmap="viridis")
            a, b, r2 = (figures[f"{est}_vs_{space}_{k}"] for k in ("slope", "intercept", "r2"))
            ax.plot([0, 1], [b, a + b], "r-", lw=1.5)
            ax.set_title(f"{'LOMPO std log p' if est == 'lompo' else 'Max Var'} vs {space} error: R² {r2:.3f}",
                         fontsize=9)
            ax.set_xlabel(f"{est} (normalised)")
            ax.set_ylabel(f"{space} error (normalised)")
            ax.set_xlim(0, 1), ax.set_ylim(0, 1)
            fig.colorbar(sc, ax=ax, label="rollout step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def format_analysis(f: dict) -> str:
    lines = [f"rollouts of {f['horizon']} steps with the dataset's actions, {f['points']} points",
             f"{'estimate':<8} {'error':<7} {'R²':>7} {'slope':>7}"]
    for key in sorted(k for k in f if k.endswith("_r2")):
        est, space = key[:-len("_r2")].split("_vs_")
        lines.append(f"{est:<8} {space:<7} {f[key]:>7.3f} {f[f'{est}_vs_{space}_slope']:>7.3f}")
    lines.append(f"LOMPO's lambda calibrated to the model's reward error: E|r_hat - r| {f['error_reward_mean']:.4f} / "
                 f"E[std log p] {f['lompo_mean']:.4f} = {f['lompo_lambda_calibrated']:.3f}")
    return "\n".join(lines)


def analyse_run(run_dir, horizon: int | None = None, dataset_path=None, device=None) -> dict:
    """`latent-combo analyse`: the analysis of a run folder's world model, written to analysis.json, the
    run's results.json (if finished), uncertainty_vs_error.png and TensorBoard (`analysis/`)."""
    import json
    from pathlib import Path

    from torch.utils.tensorboard import SummaryWriter

    from latent_combo import report
    from latent_combo.utils import atomic_write_text
    from latent_combo.world_model_training import load_trained_world_model

    run_dir = Path(run_dir)
    cfg, wm, dataset, device, step, results = load_trained_world_model(run_dir, dataset_path, device)
    figures, points = analyse(wm, dataset, device, horizon or cfg.agent.rollout_length, seed=cfg.seed)
    fig = plot(points, figures, f"{cfg.env} {Path(dataset.directory).name} ({run_dir.name}): uncertainty vs "
                                f"model error along {figures['horizon']}-step rollouts")
    fig.savefig(run_dir / "uncertainty_vs_error.png", dpi=110)
    writer = SummaryWriter(str(run_dir))
    report.log_scalars(writer, {f"analysis/{k}": v for k, v in figures.items() if k.endswith(("_r2", "_slope"))},
                       step)
    writer.add_figure("analysis/uncertainty_vs_error", fig, step)
    writer.close()
    atomic_write_text(run_dir / "analysis.json", json.dumps({"wm_step": step, "analysis": figures}, indent=1))
    if results:
        results["analysis"] = figures
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    return figures
