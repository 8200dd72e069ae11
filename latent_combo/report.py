"""TensorBoard: one tag scheme with a description per tag, labelled image grids, HParams and a custom layout.

Tags: `1_result/` the run's result at a glance (copies of the key tags, see RESULT), `wm/` world model,
`agent/` agent, `rollout/` model rollouts, `eval/` evaluations in the simulator, `probe/` the world-model
probe, `analysis/` uncertainty vs model error (`latent-combo analyse`), `speed/` updates per second.
TensorBoard shows each description on hover.
"""

from __future__ import annotations

import re

import numpy as np
import torch

# The group TensorBoard's Time Series opens on. It groups cards by a tag's first segment, orders groups and cards by
# tag in natural order, where digits (and "/") come before letters, and expands the first two groups (tensorboard
# 2.21, metrics dashboard). Pinned cards would be the other way, but pins live in each browser and cannot be
# set from files. So the result's copies sit in "1_result", shown first and open above agent/ (the second group):
# its image chart `eval_curve`, the score curve, then Q on the data and the regulariser (card order is by name).
RESULT = "1_result"

# Descriptions by tag; `{k}` / `{h}` stand for a number (a prior head, a horizon), `{name}` for a word.
DESCRIPTIONS = {
    f"{RESULT}/eval_normalized_score": "the evaluations' normalised score, the final one at the last step (the "
                                       "values of eval/normalized_score, here so that Time Series shows it first)",
    f"{RESULT}/eval_success_rate": "the evaluations' success rate, the final one at the last step (the values of "
                                   "eval/success_rate, here so that Time Series shows it first)",
    f"{RESULT}/q_data": "Q on dataset (state, action) pairs (the values of agent/q_data)",
    f"{RESULT}/regulariser": "E_rho[Q] - E_D[Q] averaged over the last tenth of the updates so far: its last value is "
                             "the selection rule's (agent/regulariser_tail_mean; negative is what COMBO asks for)",
    "wm/obs": "ELBO reconstruction term: 1/2 squared error of the decoded image (or state), summed over pixels",
    "wm/reward": "1/2 squared error of the reward head on posterior features",
    "wm/kl": "KL(posterior || prior head k), averaged over the K heads (the ELBO's KL term, before free nats)",
    "wm/kl_head{k}": "KL(posterior || prior head k) for one head",
    "wm/inverse": "inverse-dynamics loss: a_t predicted from the embeddings of frames t-2..t (if enabled)",
    "wm/total": "the weighted world-model loss that is minimised",
    "wm/grad_norm": "world-model gradient norm before clipping (not a loss)",
    "wm/post_std": "mean standard deviation of the posterior z (not a loss)",
    "wm/open_loop_mse_h{h}": "per-pixel (or per-dimension) squared error of prior predictions h steps after "
                             "5 filtered steps, with the real actions",
    "agent/critic_loss": "critic objective of eq. 2: Bellman error + beta x conservative penalty",
    "agent/bellman": "squared Bellman error on the batch (fraction f real, 1 - f model rollouts), summed over critics "
                     "(the authors' scale: no 1/2)",
    "agent/td3bc_lambda": "TD3+BC's lambda = agent.td3bc_alpha / E|Q| on the actor's Q term (constraint on)",
    "estimate/model_return": "the policy's return predicted by its world model (mean over prior heads, in the score's "
                             "units; latent-combo estimate): an offline figure, never a simulator return",
    "estimate/model_return_ci95": "half-width of the 95% interval of model_return over the start states",
    "estimate/model_return_min_head": "model return of the prior head that predicts the least",
    "estimate/model_return_pessimistic": "model return's mean over heads minus their spread",
    "estimate/model_return_probe_read": "the same rollouts read by the state probe and scored by the task's reward "
                                        "(walker-walk): apart from model_return where the model drifts",
    "estimate/model_success": "share of model rollouts whose predicted reward passes 0.5 at some step (sawyer)",
    "agent/penalty": "conservative penalty before beta: soft-max of Q on pushed-down states minus Q on data",
    "agent/regulariser": "E_rho[Q] - E_D[Q] in the plain form of eq. 2: the offline selection rule reads it",
    "agent/regulariser_tail_mean": "the regulariser averaged over the last tenth of training (the rule's value)",
    "agent/q_batch": "Q on the Bellman batch (real and model pairs mixed as trained), mean over critics",
    "agent/q_data": "Q on dataset (state, action) pairs: pushed up by the penalty",
    "agent/q_model": "Q on model-rollout (state, action) pairs from the model buffer",
    "agent/q_rho": "Q at policy actions on the pushed-down states (rollouts; dataset too with rho_dataset)",
    "agent/q_policy": "min over critics of Q at the actor's actions on the actor's states (what eq. 3 maximises)",
    "agent/td_target": "mean Bellman target r + gamma (min Q' - alpha log pi)",
    "agent/actor": "actor loss of eq. 3: alpha log pi - min Q",
    "agent/alpha": "entropy temperature",
    "agent/beta": "the penalty weight beta, tuned by dual ascent toward agent.target_gap (when set)",
    "agent/alpha_loss": "temperature loss (tracks the target entropy)",
    "agent/entropy": "policy entropy estimate -log pi on the actor's states",
    "agent/bc_nll": "behaviour cloning (agent.bc_loss=nll): negative log-likelihood of dataset actions",
    "agent/bc_mse": "behaviour cloning: squared error of the deterministic action to the dataset's, summed over dims",
    "rollout/reward": "mean predicted reward of the latest model-rollout refresh",
    "rollout/reward_minus_data": "rollout reward minus the dataset's mean reward (well above 0 with a policy the "
                                 "real env scores low: the policy exploits the model)",
    "agent/policy_action_mse": "squared distance of the deterministic policy action to the dataset action on real "
                               "states, summed over dims (how far the policy has left the data)",
    "agent/policy_saturation": "share of the deterministic policy's action dims at |a| > 0.99 on real states",
    "agent/data_saturation": "share of the dataset's action dims at |a| > 0.99 (compare policy_saturation)",
    "rollout/buffer_age": "mean number of agent updates since the model buffer's rollouts were made (how stale "
                          "the policy that made them is: about (refreshes held - 1) / 2 x agent.rollout_every)",
    "rollout/disagreement": "LOMPO: std over prior heads of log p_k(z'|h') on the latest refresh (before lambda)",
    "eval/return_mean": "mean return of the evaluation episodes (deterministic policy, from pixels)",
    "eval/return_ci95": "half-width of the 95% interval of the mean return",
    "eval/normalized_score": "return / 10 (V-D4RL's DMC convention), mean over the evaluation episodes",
    "eval/normalized_score_ci95": "half-width of the 95% interval of the normalised score",
    "eval/normalized_score_lo": "normalised score minus its 95% half-width (the band's lower edge)",
    "eval/normalized_score_hi": "normalised score plus its 95% half-width (the band's upper edge)",
    "eval/success_rate": "share of evaluation episodes that succeeded at any step",
    "eval/success_ci95": "half-width of the 95% interval of the success rate",
    "eval/success_lo": "success rate minus its 95% half-width",
    "eval/success_hi": "success rate plus its 95% half-width",
    "eval/episodes": "evaluation episodes behind each point (the last point: final_eval_episodes)",
    "eval/final_normalized_score": "the final evaluation's score alone (final_eval_episodes episodes; also the last "
                                   "point of eval/normalized_score): the HParams dashboard's metric",
    "eval/final_success_rate": "the final evaluation's success rate alone (final_eval_episodes episodes; also the "
                               "last point of eval/success_rate): the HParams dashboard's metric",
    "eval/final_return_mean": "the final evaluation's mean return alone (also the last point of eval/return_mean)",
    "agent/final_regulariser": "the regulariser at the end of training (selection rule's value)",
    "probe/state_r2": "held-out R² of a ridge regression from the posterior's mean features (h, mean of z) to the "
                      "true state (mean over dims)",
    "probe/state_r2_sample": "the same from (h, a sample of z), the features the agent sees",
    "probe/open_loop_r2_h{h}": "held-out state R² read from prior rollouts h steps after a filtered state",
    "probe/state_r2_mlp": "held-out R² of an MLP (256 x 256) from the posterior's mean features to the state (mean "
                          "over dims)",
    "probe/state_r2_from_step_{k}": "held-out state R² (1 - MSE / variance of all held-out steps) over the steps from "
                                    "k to the next window's start (1, 24, 100, 250): drift of the filtered state",
    "probe/state_r2_{name}": "held-out state R² over one named group of state dimensions",
    "probe/state_rmse_{name}": "held-out RMSE, in the state's own units, over one named group of dimensions",
    "probe/reward_std": "standard deviation of the held-out rewards (the scale of the reward RMSEs)",
    "probe/separability": "held-out accuracy telling posterior from one-step prior features (0.5: indistinguishable)",
    "probe/reward_rmse_posterior": "reward head RMSE on held-out posterior features",
    "probe/reward_rmse_prior": "reward head RMSE on one-step prior features of held-out steps",
    "analysis/{name}_vs_{name}_r2": "R² of a line fitted to model error (latent or state space) against an "
                                    "uncertainty estimate (lompo, maxvar), both normalised to [0, 1]",
    "analysis/{name}_vs_{name}_slope": "slope of that line (normalised units)",
    "speed/wm_updates_per_s": "world-model updates per second",
    "speed/agent_updates_per_s": "agent updates per second",
}
_PATTERNS = [(re.compile("^" + re.escape(k).replace(r"\{k\}", r"\d+").replace(r"\{h\}", r"\d+")
                         .replace(r"\{name\}", r"[a-z]+") + "$"), v) for k, v in DESCRIPTIONS.items()]


def describe(tag: str) -> str:
    for pattern, text in _PATTERNS:
        if pattern.match(tag):
            return text
    return ""


def scalar(writer, tag: str, value, step: int) -> None:
    """A scalar, carrying its description (DESCRIPTIONS) the first time the tag is written by `writer`.
    Written as a 0-d tensor with the scalars plugin's metadata (as TensorFlow 2 writes scalars): TensorBoard
    keeps a description given that way, and drops it from the older `simple_value` form."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_FLOAT

    value = float(value)
    if not np.isfinite(value):
        return
    seen = writer.__dict__.setdefault("_described_tags", set())
    meta = SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    if tag not in seen:
        seen.add(tag)
        meta.summary_description = describe(tag)
    tensor = TensorProto(dtype=DT_FLOAT, float_val=[value], tensor_shape=TensorShapeProto())
    summary = Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=meta)])
    file_writer = writer._get_file_writer()
    if file_writer is not None:  # None: a writer that logs nothing
        file_writer.add_summary(summary, step)


def log_scalars(writer, metrics: dict, step: int) -> None:
    """Every number of `metrics` under its own key as the tag."""
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            scalar(writer, k, v, step)


def score_key(result: dict) -> str:
    """What an evaluation is scored by: the success rate on sparse-success envs, else the normalised score."""
    return "success_rate" if "eval_success_rate" in result else "normalized_score"


def eval_scalars(result: dict, final: bool = False) -> dict:
    """An evaluation's floats by tag: under eval/ with the 95% band's edges, and its score under RESULT. The final
    evaluation goes on the same curves (at the last step), and alone as eval/final_* too: one point each, the HParams
    dashboard's metrics (docs/tensorboard.md names them)."""
    out = {}
    for key in ("return_mean", "return_ci95", "normalized_score", "normalized_score_ci95", "success_rate",
                "success_ci95"):
        if f"eval_{key}" in result:
            out[f"eval/{key}"] = result[f"eval_{key}"]
    for key, half, name in (("normalized_score", "normalized_score_ci95", "normalized_score"),
                            ("success_rate", "success_ci95", "success")):
        if f"eval/{key}" in out:
            out[f"eval/{name}_lo"] = out[f"eval/{key}"] - out[f"eval/{half}"]
            out[f"eval/{name}_hi"] = out[f"eval/{key}"] + out[f"eval/{half}"]
    out["eval/episodes"] = float(result["eval_episodes"])
    score = score_key(result)
    out[f"{RESULT}/eval_{score}"] = result[f"eval_{score}"]
    if final:
        out.update({f"eval/final_{k}": result[f"eval_{k}"] for k in ("return_mean", score)})
    return out


def custom_layout(env: str, algo: str) -> dict:
    """The Custom Scalars tab for one run: only the charts its env and algorithm fill (a walker run has no success
    rate, a sawyer run no normalised score, BC no critic). Multiline tags are regexes matched from a tag's start:
    `^...$` draws that tag alone (agent/regulariser would also draw agent/regulariser_tail_mean). TensorBoard merges
    the layouts of the runs it shows, so a logdir of walker and sawyer runs gets both score charts."""
    from latent_combo.agent import USES_PENALTY, USES_ROLLOUTS
    from latent_combo.envs import SUCCESS_ENVS

    # The band's edges are drawn with the score: TensorBoard's default "ignore outliers" drops a chart's values
    # outside its 5th-95th percentile, which are then band edges; up to 7 evaluations (the cpu preset has 5, the
    # final one included) that spares every point of the score itself.
    if env in SUCCESS_ENVS:
        band = {"success rate (the final evaluation at the last step)": [
            "Margin", ["eval/success_rate", "eval/success_lo", "eval/success_hi"]]}
    else:
        band = {"normalised score (the final evaluation at the last step)": [
            "Margin", ["eval/normalized_score", "eval/normalized_score_lo", "eval/normalized_score_hi"]]}
    # TensorBoard keeps the chart order of the first run's layout (runs sorted by name: bc-... comes first) and
    # appends the charts other runs add, skipping identical ones: the chart every algorithm fills goes first, so
    # the order is the same in any logdir, and a chart is the same for every algorithm that has it (a tag a run
    # lacks draws no line), so runs of several algorithms share it rather than showing two of one title.
    agent = {"policy vs data actions": ["Multiline", ["^agent/policy_action_mse$", "^agent/policy_saturation$",
                                                     "^agent/data_saturation$"]]}
    if algo != "bc":
        agent["Q on dataset pairs, rollout pairs and pushed-down states"] = [
            "Multiline", ["^agent/q_data$", "^agent/q_model$", "^agent/q_rho$"]]
    if USES_PENALTY[algo]:  # a chart of its own: a few tenths, on Q's axis of tens it reads as flat
        agent["regulariser E_rho[Q] - E_D[Q], mean over the last tenth of the updates (the selection rule's)"] = [
            "Multiline", ["^agent/regulariser_tail_mean$"]]
    if USES_ROLLOUTS[algo]:
        agent["rollout reward minus the dataset's"] = ["Multiline", ["^rollout/reward_minus_data$"]]
    return {"evaluation (95% band)": band, "agent: policy vs data, Q, regulariser": agent}


# HParams shows 5 hparams columns at first: those whose experiment info says `differs`, then by name. Every run
# writes its own experiment summary and TensorBoard reads one of them, so nothing says what differs across runs:
# by name alone the columns were agent_steps, algo, beta, dataset, env, and the seed (11th) stayed hidden.
HPARAMS_SHOWN = ("algo", "env", "dataset", "seed", "beta")


def log_hparams(writer, hparams: dict, metrics: dict, step: int) -> None:
    """The HParams dashboard's session for this run: its settings and final metrics (also as scalars, which
    the dashboard reads), written into the run's own event file so runs of a sweep line up side by side.
    HPARAMS_SHOWN are the columns shown without ticking them (the others are a tick away)."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    metrics = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    exp, ssi, sei = hparams_summary({k: v for k, v in hparams.items() if v is not None}, metrics)
    plugin = exp.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in HPARAMS_SHOWN
    plugin.content = data.SerializeToString()
    file_writer = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        if file_writer is not None:
            file_writer.add_summary(summary)
    seen = writer.__dict__.get("_described_tags", set())
    for k, v in metrics.items():
        if k not in seen:  # e.g. eval/final_* are logged already; probe/state_r2 only if probed in this process
            scalar(writer, k, v, step)


def result_chart(history: list[dict], final: dict, step: int, references: dict):
    """The score over training with its 95% band, the final evaluation marked and reference scores as dashed
    lines, as a matplotlib figure. Written as an image (RESULT/eval_curve): TensorBoard's default scaling cuts a
    scalar card's lowest and highest points, here the final one most often; an image keeps them all. Sized for
    a Time Series card, which shows an image at most ~400 x 200 px: 2:1, labels on the lines rather than in a
    legend, no title (the card names the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = score_key(final)
    half = "success_ci95" if score == "success_rate" else "normalized_score_ci95"
    scale = 100 if score == "success_rate" else 1  # success in percent
    points = [p for p in history if f"eval_{score}" in p] + [{"step": step, **final}]
    x = np.array([p["step"] for p in points])
    y, h = (np.array([p[f"eval_{k}"] for p in points]) * scale for k in (score, half))
    with plt.rc_context({"font.size": 9}):
        fig, ax = plt.subplots(figsize=(4.8, 2.4), dpi=100)
        ax.fill_between(x, y - h, y + h, alpha=0.2, color="C0", lw=0)
        ax.plot(x, y, "o-", color="C0")
        ax.errorbar(x[-1:], y[-1:], h[-1:], fmt="*", ms=12, color="C3", capsize=3)
        ax.annotate(f"final {y[-1]:.1f} ±{h[-1]:.1f}\n({final['eval_episodes']} episodes)", (x[-1], y[-1]),
                    xytext=(-10, 6), textcoords="offset points", ha="right", color="C3")
        for i, (name, value) in enumerate(references.items()):
            ax.axhline(value * scale, ls="--", lw=1.2, color=f"C{i + 4}")
            ax.text(0.01, value * scale, f"{name} {value * scale:.1f}", transform=ax.get_yaxis_transform(),
                    va="bottom", color=f"C{i + 4}")
        ax.set_xlabel("agent updates")
        ax.set_ylabel("success rate (%)" if scale == 100 else "normalised score")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        fig.tight_layout()
    return fig


# ----- images ---------------------------------------------------------------------------------------

# TensorBoard scales an image down to its card (~500 px for a ~700 px grid): text must be drawn large
# enough to survive that (at 0.33 the row names were unreadable until "Show actual image size").
LABEL_WIDTH, FONT_SCALE, HEADER_HEIGHT = 64, 0.5, 22


def _label(height: int, text: str) -> np.ndarray:
    import cv2

    img = np.full((height, LABEL_WIDTH, 3), 255, np.uint8)
    cv2.putText(img, text, (2, height // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def open_loop_grid(truth: torch.Tensor, model: torch.Tensor, context: int, head: int, every: int = 2) -> np.ndarray:
    """(B, T, 3, H, W) images in [-0.5, 0.5] -> one labelled HWC uint8 grid: a header naming the prior head,
    the frame stride and where filtering ends; per sequence three rows (truth, model, |error|) with their
    names on the left; a red line between the last filtered frame and the first open-loop prediction."""
    import cv2

    truth, model = truth[:, ::every].clamp(-0.5, 0.5) + 0.5, model[:, ::every].clamp(-0.5, 0.5) + 0.5
    err = (model - truth).abs()
    rows = torch.stack([truth, model, err], 1)  # (B, 3, T, C, H, W)
    B, R, T, C, H, W = rows.shape
    grid = (rows.permute(0, 1, 4, 2, 5, 3).reshape(B * R * H, T * W, C).cpu().numpy() * 255).astype(np.uint8)
    boundary = -(-context // every) * W  # first column drawn from the prior
    grid[:, max(0, boundary - 1):boundary + 1] = (255, 0, 0)
    labels = np.concatenate([_label(H, name) for _ in range(B) for name in ("truth", "model", "error")])
    grid = np.concatenate([labels, grid], 1)
    header = np.full((HEADER_HEIGHT, grid.shape[1], 3), 255, np.uint8)
    text = f"prior head {head} | 1 frame in {every} | left of red: {context} filtered | right: open loop"
    cv2.putText(header, text, (2, HEADER_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([header, grid], 0)


def frame_grid(frames: list, rows: int = 2, cols: int = 5, zoom: int = 2) -> np.ndarray:
    """Evaluation frames spread evenly over the episode, `rows` x `cols` of them, each `zoom` times its size
    and labelled with its step: one HWC image that stays legible at TensorBoard's card size, at most ~400 x
    200 px (a strip of 25 64-px frames side by side was scaled down to ~20 px tall; 2 x 5 2x frames, to 80)."""
    import cv2

    if not frames:
        return np.zeros((64, 64, 3), np.uint8)
    picked = np.unique(np.linspace(0, len(frames) - 1, rows * cols).round().astype(int))
    tiles = []
    for i in picked:
        tile = np.ascontiguousarray(np.repeat(np.repeat(frames[i], zoom, 0), zoom, 1))
        for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a dark outline: any background
            cv2.putText(tile, f"t={i}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, colour, width, cv2.LINE_AA)
        tiles.append(tile)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)  # a short episode: blank tiles fill the last row
    return np.concatenate([np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)], 0)


def state_plot_grid(truth: torch.Tensor, model: torch.Tensor, size: int = 64) -> np.ndarray:
    """State mode: (B, T, D) normalised states drawn as heat-map rows (truth, model, error) per sequence."""
    t, m = truth[:4], model[:4]
    rows = torch.cat([t, m, (m - t).abs()], 1)  # (B, 3T, D) ... stacked by sequence
    x = rows.reshape(-1, rows.shape[-1]).T  # (D, B*3T)
    x = ((x.clamp(-3, 3) + 3) / 6 * 255).byte().cpu().numpy()
    return np.repeat(np.repeat(x, 4, 0), 2, 1)[..., None].repeat(3, -1)
