"""Uncertainty vs model error (the paper's Fig. 2): the fit reads a line where there is one, and the command
writes its figures, plot and TensorBoard entries after a debug run."""

import json

import numpy as np

from latent_combo.analyse import linear_fit
from latent_combo.cli import main as cli


def test_linear_fit_finds_a_line_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, 2000)
    fit = linear_fit(x, 3 * x + 1 + 0.01 * rng.normal(size=2000))
    assert fit["r2"] > 0.99 and abs(fit["slope"] - 1) < 0.02  # normalised: the line runs corner to corner
    assert linear_fit(x, rng.normal(size=2000))["r2"] < 0.01


def test_analyse_after_a_debug_run(env_datasets, tmp_path, capsys):
    data = env_datasets["sawyer-door"]
    assert cli(["train", "--env", "sawyer-door", "--dataset", str(data), "--preset", "debug",
                "--logdir", str(tmp_path), "--world-model-only"]) == 0
    run = tmp_path / "sawyer-door" / data.name / "combo-image-debug-s0"
    assert cli(["analyse", str(run), "--horizon", "3"]) == 0
    figures = json.loads((run / "analysis.json").read_text())["analysis"]
    for est in ("lompo", "maxvar"):
        for space in ("latent", "state"):
            assert 0 <= figures[f"{est}_vs_{space}_r2"] <= 1
    assert 0 <= figures["lompo_vs_reward_r2"] <= 1
    # LOMPO's offline lambda: the model's mean reward error over its mean disagreement, both measured here.
    assert figures["error_reward_mean"] > 0 and figures["lompo_mean"] > 0
    assert abs(figures["lompo_lambda_calibrated"] - figures["error_reward_mean"] / figures["lompo_mean"]) < 1e-9
    assert "calibrated" in capsys.readouterr().out
    assert figures["horizon"] == 3 and figures["points"] > 0
    assert (run / "uncertainty_vs_error.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert "analysis/uncertainty_vs_error" in acc.Tags()["images"]
    assert "analysis/maxvar_vs_state_r2" in acc.Tags()["tensors"]
