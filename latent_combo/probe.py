"""Does the world model see? Probes from the agent's latent features to the true state the datasets store.

- state R²: ridge regression from posterior features to the state, fitted on 80% of the episodes and
  scored on the rest (per dimension, and in the state's own units as RMSE). The headline reads the posterior's
  mean, (h, mean of z); `state_r2_sample` reads (h, a sample of z), the features the agent sees;
- open-loop R² at horizons 1, 5, 15: prior rollouts with the real actions from filtered states, mapped to
  state by the same regression;
- reward error of the reward head on held-out posterior and one-step prior features;
- separability: accuracy of a logistic regression telling posterior features of real steps from
  one-step prior predictions of the same steps (0.5: the critic cannot tell model states by their look);
- drift: the state R² over windows of time steps (from step 1, 24, 100, 250 to the next), with the variance
  of all held-out steps: does the filtered state, trained on 24-step windows, hold over a 500-step episode?
"""

from __future__ import annotations

import numpy as np
import torch

from latent_combo.latent import padded_episodes

HORIZONS = (1, 5, 15)
DRIFT_WINDOWS = (1, 24, 100, 250)  # first steps of the time windows of the drift figures
# Named groups of state dimensions, reported on their own (the rest only per dimension).
STATE_GROUPS = {
    "walker-walk": {"positions": range(0, 15), "velocities": range(15, 24)},
    "sawyer-door": {"hand": range(0, 3), "gripper": range(3, 4), "handle": range(4, 7)},
    "sawyer-door-close": {"hand": range(0, 3), "gripper": range(3, 4), "handle": range(4, 7)},
}


@torch.no_grad()
def encode_for_probe(wm, dataset, device, rng: np.random.Generator, chunk: int = 32) -> dict:
    """Per step of every episode: posterior features (h, a sample of z), the posterior's mean features (h, mean
    of z), one-step prior features (same h, z drawn from a random prior head), the true state and reward, the
    episode index. Step 0 of each episode is left out (its prior comes from the reset state, not from a filtered
    one)."""
    wm.eval()
    rssm, parts = wm.rssm, {k: [] for k in ("post", "post_mean", "prior", "state", "reward", "episode", "step")}
    for lo in range(0, len(dataset), chunk):
        eps = [dataset.episode(i) for i in range(lo, min(lo + chunk, len(dataset)))]
        b = padded_episodes(eps, (wm.obs, "action", "is_first"), device)
        post = rssm.observe(wm.embed(wm.target(b)), b["action"], b["is_first"])
        mean, std = rssm.prior_stats(post["h"])  # (K, B, T, S)
        head = torch.as_tensor(rng.integers(rssm.ensemble, size=post["h"].shape[:2]), device=device)
        idx = head[None, ..., None].expand(1, *mean.shape[1:])
        mean, std = mean.gather(0, idx)[0], std.gather(0, idx)[0]
        z_prior = mean + std * torch.randn_like(std)
        prior = torch.cat([post["h"], z_prior], -1)
        post_mean = torch.cat([post["h"], post["post_mean"]], -1)
        for j, e in enumerate(eps):
            t = len(e["reward"])
            parts["post"].append(post["feat"][j, 1:t].cpu().numpy())
            parts["post_mean"].append(post_mean[j, 1:t].cpu().numpy())
            parts["prior"].append(prior[j, 1:t].cpu().numpy())
            parts["state"].append(e["state"][1:t])
            parts["reward"].append(e["reward"][1:t])
            parts["episode"].append(np.full(t - 1, lo + j))
            parts["step"].append(np.arange(1, t))
    wm.train()
    return {k: np.concatenate(v) for k, v in parts.items()}


def fit_state_probe(x: np.ndarray, y: np.ndarray):
    """Ridge regression on standardised features, its strength chosen by leave-one-out on the training set."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 7))).fit(x, y)


def varying_dims(y: np.ndarray) -> np.ndarray:
    """Dimensions of the state worth scoring: (near-)constant ones have no meaningful R². Sawyer's padding is
    exactly 0, its goal and handle height jitter by 0.02-0.06 mm (std 1e-5 m): a relative cut at 1e-3 of
    the widest dimension's std drops both and keeps all of walker's (min 0.34)."""
    std = y.std(0)
    return np.flatnonzero(std > 1e-3 * std.max())


def nonlinear_r2(x_train, y_train, x_test, y_test, dims, rng, n: int = 40_000) -> float:
    """Held-out R² (mean over `dims`) of an MLP (256 x 256, scikit-learn, early stopping) from features to the
    standardised state, fitted on at most `n` training steps: what a nonlinear reader (the agent's networks
    are nonlinear) finds that the ridge does not."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pick = rng.choice(len(x_train), min(n, len(x_train)), replace=False)
    scale = StandardScaler().fit(y_train[:, dims])
    mlp = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=60,
                                                       early_stopping=True, random_state=0))
    mlp.fit(x_train[pick], scale.transform(y_train[pick][:, dims]))
    pred = scale.inverse_transform(mlp.predict(x_test))
    return float(r2_per_dim(y_test[:, dims], pred, np.arange(len(dims))).mean())


def r2_per_dim(y: np.ndarray, pred: np.ndarray, dims: np.ndarray) -> np.ndarray:
    from sklearn.metrics import r2_score

    return r2_score(y[:, dims], pred[:, dims], multioutput="raw_values")


def separability(post_train, prior_train, post_test, prior_test, rng, n: int = 10_000) -> float:
    """Held-out accuracy of a logistic regression telling posterior from one-step prior features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def pair(a, b):
        ia, ib = (rng.choice(len(v), min(n, len(v)), replace=False) for v in (a, b))
        return np.concatenate([a[ia], b[ib]]), np.concatenate([np.ones(len(ia)), np.zeros(len(ib))])

    x, y = pair(post_train, prior_train)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    return float(clf.score(*pair(post_test, prior_test)))


def drift_r2(y: np.ndarray, pred: np.ndarray, step: np.ndarray, dims: np.ndarray) -> dict:
    """1 - MSE / variance (the variance of all of `y`, so windows compare) of the held-out steps whose time step
    falls in each of DRIFT_WINDOWS; windows past the episodes' end are left out."""
    var, out = y[:, dims].var(0), {}
    for lo, hi in zip(DRIFT_WINDOWS, (*DRIFT_WINDOWS[1:], np.inf)):
        sel = (step >= lo) & (step < hi)
        if sel.any():
            mse = ((pred[sel][:, dims] - y[sel][:, dims]) ** 2).mean(0)
            out[f"state_r2_from_step_{lo}"] = float((1 - mse / var).mean())
    return out


@torch.no_grad()
def open_loop_r2(wm, dataset, data: dict, test_eps, probe, dims, device, rng, every: int = 10) -> dict:
    """R² of the probe's state read from prior rollouts with the real actions (a random prior head per
    step), `h` steps after a filtered state, for h in HORIZONS; start steps every `every` steps of the
    held-out episodes. Each dimension's error is scaled by its variance over all held-out steps (as in the
    state R²), not over the rollouts' end points: those can sit where a dimension barely moves (sawyer's
    gripper 15 steps in: std 0.001), and a millimetre's error there read as R² -150."""
    horizon = max(HORIZONS)
    starts, actions, truth = [], [], []
    for i in test_eps:
        rows = np.flatnonzero(data["episode"] == i)  # steps 1 .. T of episode i, in order
        action = dataset.episode(i)["action"]
        for s in range(0, len(rows) - horizon, every):  # row s holds step s + 1
            starts.append(rows[s])
            actions.append(action[s + 2:s + 2 + horizon])
            truth.append(data["state"][rows[s + 1:s + 1 + horizon]])
    if not starts:
        return {}
    rssm = wm.rssm
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
    start = torch.as_tensor(data["post"][starts], device=device)
    feats, _ = rssm.imagine(rssm.split(start), horizon, actions=torch.as_tensor(np.stack(actions), device=device),
                            generator=gen)
    feats, truth = feats.cpu().numpy(), np.stack(truth)
    var = data["state"][np.isin(data["episode"], test_eps)][:, dims].var(0)
    out = {}
    for h in HORIZONS:
        mse = ((probe.predict(feats[:, h - 1])[:, dims] - truth[:, h - 1][:, dims]) ** 2).mean(0)
        out[f"open_loop_r2_h{h}"] = float((1 - mse / var).mean())
    return out


def run_probe(wm, dataset, env: str, device, seed: int = 0, test_share: float = 0.2, nonlinear: bool = False) -> dict:
    """Every probe figure as a flat dict (see the module docstring); {} with a reason for a dataset
    without `state`. `nonlinear` adds `state_r2_mlp` (an MLP's held-out R² from the posterior-mean features, about a
    minute more)."""
    if "state" not in dataset.arrays:
        return {"skipped": f"{dataset.directory}: no 'state' key in the episodes (e.g. V-D4RL): nothing to probe"}
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        data = encode_for_probe(wm, dataset, device, rng)
        order = rng.permutation(len(dataset))
        n_test = max(1, int(round(test_share * len(dataset))))
        test_eps = np.sort(order[:n_test])
        test = np.isin(data["episode"], test_eps)
        train = ~test
        if not train.any():
            raise ValueError(f"{dataset.directory}: the probe needs at least 2 episodes")
        y = data["state"]
        dims = varying_dims(y)
        # The headline from the posterior mean; the sample's probe also reads the open-loop rollouts (samples too).
        probe = fit_state_probe(data["post"][train], y[train])
        sample_r2 = r2_per_dim(y[test], probe.predict(data["post"][test]), dims)
        pred = fit_state_probe(data["post_mean"][train], y[train]).predict(data["post_mean"][test])
        r2 = r2_per_dim(y[test], pred, dims)
        rmse = np.sqrt(((pred - y[test]) ** 2).mean(0))
        out = {"state_r2": float(r2.mean()), "state_r2_sample": float(sample_r2.mean()),
               "episodes_train": int(len(dataset) - n_test),
               "episodes_test": int(n_test), "dims_scored": dims.tolist(),
               "state_r2_dims": [float(v) for v in r2], "state_rmse_dims": [float(v) for v in rmse]}
        for name, group in STATE_GROUPS.get(env, {}).items():
            sel = [k for k, d in enumerate(dims) if d in group]
            if sel:
                out[f"state_r2_{name}"] = float(r2[sel].mean())
                out[f"state_rmse_{name}"] = float(np.sqrt((rmse[dims[sel]] ** 2).mean()))
        out.update(drift_r2(y[test], pred, data["step"][test], dims))
        out.update(open_loop_r2(wm, dataset, data, test_eps, probe, dims, device, rng))
        reward_of = lambda x: wm.reward(torch.as_tensor(x, device=device)).squeeze(-1).cpu().numpy()
        with torch.no_grad():
            for name in ("post", "prior"):
                err = reward_of(data[name][test]) - data["reward"][test]
                out[f"reward_rmse_{'posterior' if name == 'post' else 'prior'}"] = float(np.sqrt((err ** 2).mean()))
        out["reward_std"] = float(data["reward"][test].std())
        out["separability"] = separability(data["post"][train], data["prior"][train], data["post"][test],
                                           data["prior"][test], rng)
        if nonlinear:  # last: its draws from rng leave every other figure as without it
            out["state_r2_mlp"] = nonlinear_r2(data["post_mean"][train], y[train], data["post_mean"][test], y[test],
                                               dims, rng)
    return out


def format_probe(p: dict) -> str:
    """The headline figures on a few lines."""
    if "skipped" in p:
        return f"probe skipped: {p['skipped']}"
    drift = {k[len("state_r2_from_step_"):]: v for k, v in p.items() if k.startswith("state_r2_from_step_")}
    groups = " ".join(f"{k[len('state_r2_'):]} {v:.3f}" for k, v in p.items() if k.startswith("state_r2_")
                      and k not in ("state_r2_dims", "state_r2_mlp", "state_r2_sample")
                      and not k.startswith("state_r2_from_step_"))
    lines = [f"state R² {p['state_r2']:.3f} held out ({p['episodes_test']} of "
             f"{p['episodes_train'] + p['episodes_test']} episodes){' | ' + groups if groups else ''}",
             f"  from the posterior mean; from a sample of z (what the agent sees) {p['state_r2_sample']:.3f}",
             *([f"nonlinear (MLP) state R² {p['state_r2_mlp']:.3f}"] if "state_r2_mlp" in p else []),
             "open-loop R² " + "  ".join(f"h{h} {p[f'open_loop_r2_h{h}']:.3f}" for h in HORIZONS
                                         if f"open_loop_r2_h{h}" in p),
             f"reward RMSE posterior {p['reward_rmse_posterior']:.4f}  one-step prior {p['reward_rmse_prior']:.4f}"
             f"  (reward std {p['reward_std']:.4f})",
             f"posterior vs prior separability {p['separability']:.3f} (0.5: indistinguishable)",
             *(["state R² by time step (drift): " + "  ".join(f"from {k} {v:.3f}" for k, v in drift.items())]
               if drift else []),
             "per-dimension R² / RMSE: " + ", ".join(f"{d}: {r:.2f}/{p['state_rmse_dims'][d]:.3g}"
                                                     for d, r in zip(p["dims_scored"], p["state_r2_dims"]))]
    return "\n".join(lines)
