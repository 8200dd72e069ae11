"""TensorBoard layout (report.py) and the closing table's reference points (pipeline.results_table)."""

import json

import numpy as np
import pytest

from latent_combo import report
from latent_combo.pipeline import reference_points, results_table


def walker_eval(score, half, episodes=3):
    return {"eval_return_mean": score * 10, "eval_return_ci95": half * 10, "eval_normalized_score": score,
            "eval_normalized_score_ci95": half, "eval_episodes": episodes}


def test_the_final_evaluation_goes_on_the_periodic_curves_and_alone_for_hparams():
    periodic, final = report.eval_scalars(walker_eval(20.0, 5.0)), report.eval_scalars(walker_eval(30.0, 2.0, 20),
                                                                                          final=True)
    assert {k for k in periodic if "final" in k} == set()
    assert set(periodic) < set(final)  # the same curves, one more point each
    assert final["eval/normalized_score"] == final["1_result/eval_normalized_score"] == 30.0
    assert (final["eval/normalized_score_lo"], final["eval/normalized_score_hi"]) == (28.0, 32.0)
    assert final["eval/final_normalized_score"] == 30.0 and final["eval/episodes"] == 20
    sawyer = report.eval_scalars({"eval_return_mean": 1.0, "eval_return_ci95": 0.0, "eval_success_rate": 0.5,
                                  "eval_success_ci95": 0.1, "eval_episodes": 4}, final=True)
    assert sawyer["1_result/eval_success_rate"] == sawyer["eval/final_success_rate"] == 0.5
    assert not [k for k in sawyer if "normalized" in k]
    assert all(report.describe(k) for k in [*final, *sawyer])


def test_the_result_group_sorts_first_in_time_series():
    """TensorBoard's Time Series orders cards by tag in natural order, numbers (and '/') before other characters
    (its compareTagNames): a sort key doing the same puts every 1_result card before any other group's."""
    import re

    def natural(tag):
        return [(0, int(p)) if p.isdigit() else (0, 0) if p == "/" else (1, p) for p in re.findall(r"\d+|\D", tag)]

    tags = ["agent/actor", "agent/alpha", "eval/normalized_score", "estimate/model_return", "1_result/q_data",
            "1_result/eval_normalized_score", "1_result/regulariser", "1_result/eval_curve", "wm/obs"]
    assert sorted(tags, key=natural)[:4] == ["1_result/eval_curve", "1_result/eval_normalized_score",
                                             "1_result/q_data", "1_result/regulariser"]


@pytest.mark.parametrize("env", ["walker-walk", "sawyer-door"])
@pytest.mark.parametrize("algo", ["combo", "lompo", "cql", "bc"])
def test_custom_layout_has_only_the_charts_the_run_fills(env, algo):
    layout = report.custom_layout(env, algo)
    assert list(layout)[0] == "evaluation (95% band)"  # the score first
    (band,) = layout["evaluation (95% band)"].values()
    score = "eval/success_rate" if env == "sawyer-door" else "eval/normalized_score"
    assert band[0] == "Margin" and band[1][0] == score
    charts = layout["agent: policy vs data, Q, regulariser"]
    assert list(charts)[0] == "policy vs data actions"  # every algorithm's: the same order once runs are merged
    tags = [t for kind, regexes in charts.values() for t in regexes]
    assert all(t.startswith("^") and t.endswith("$") for t in tags)  # each regex draws its one tag
    assert ("^agent/q_data$" in tags) == ("^agent/q_model$" in tags) == (algo != "bc")
    assert ("^rollout/reward_minus_data$" in tags) == (algo in ("combo", "lompo"))
    # Every algorithm that has a chart has the same one: merged across runs, one chart per title.
    combo = report.custom_layout(env, "combo")["agent: policy vs data, Q, regulariser"]
    assert all(combo[title] == chart for title, chart in charts.items())
    regulariser = [regexes for _, regexes in charts.values() if "^agent/regulariser_tail_mean$" in regexes]
    assert regulariser == ([["^agent/regulariser_tail_mean$"]] if algo in ("combo", "cql") else [])  # its own chart


def test_frame_grid_is_legible_and_spans_the_episode():
    frames = [np.full((64, 64, 3), t, np.uint8) for t in range(100)]
    grid = report.frame_grid(frames)
    assert grid.shape == (2 * 128, 5 * 128, 3) and grid.dtype == np.uint8
    assert grid[-60, -60, 0] == 99  # the last tile is the last frame (below its label)
    short = report.frame_grid(frames[:7])
    assert short.shape == (2 * 128, 5 * 128, 3) and short[-1, -1].sum() == 0  # a blank tile ends the row
    assert report.frame_grid(frames[:3]).shape == (128, 5 * 128, 3)


def test_hparams_show_the_seed_among_the_first_columns(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    hparams = {"algo": "combo", "obs": "image", "preset": "cpu", "env": "walker-walk", "dataset": "medium",
               "seed": 1, "beta": 0.5, "f": 0.5, "rollout_length": 5, "lompo_lambda": 1.0, "wm_steps": 700,
               "agent_steps": 5000}
    report.log_hparams(writer, hparams, {"eval/final_normalized_score": 30.0}, 10)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    infos = plugin_data_pb2.HParamsPluginData.FromString(content).experiment.hparam_infos
    # TensorBoard lists `differs` first, then by name, and shows the first 5 (backend_context and its dashboard).
    first = [i.name for i in sorted(infos, key=lambda i: (not i.differs, i.name))][:5]
    assert "seed" in first and set(first) == set(report.HPARAMS_SHOWN)


def results_row(run_dir, algo, env="walker-walk", score=30.0, seed=0):
    row = {"env": env, "dataset": "data/walker-walk/medium-20ep", "algo": algo, "obs": "image", "seed": seed,
           "preset": "cpu", "eval_return_mean": score * 10, "eval_return_ci95": 50.0, "eval_normalized_score": score,
           "eval_normalized_score_ci95": 5.0, "final_regulariser": -0.5, "wall_time_s": 800.0,
           "dataset_stats": {"return_mean": 495.0}, "run_dir": str(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(row))
    return row


def test_closing_table_prints_random_batch_mean_and_a_finished_bc_beside_the_score(tmp_path):
    runs = tmp_path / "walker-walk" / "medium-20ep"
    combo = results_row(runs / "combo-image-cpu-s0", "combo", score=38.6)
    line = results_table([combo]).splitlines()[-1]
    assert line.split()[9:12] == ["4.4", "49.5", "-"]  # random, Batch Mean (return 495 / 10), no BC yet
    results_row(runs / "bc-image-cpu-s1", "bc", score=99.0, seed=1)  # another seed's BC: not this run's reference
    results_row(runs / "bc-image-cpu-s0", "bc", score=37.7)
    assert reference_points("walker-walk", combo["dataset_stats"], combo["run_dir"]) == {
        "random": 4.4, "Batch Mean": 49.5, "BC": 37.7}
    table = results_table([combo])
    head, line = table.splitlines()[0], table.splitlines()[-1]
    assert head.split()[7:11] == ["random", "Batch", "Mean", "BC"]
    assert line.split()[9:12] == ["4.4", "49.5", "37.7"]
    bc_line = results_table([json.loads((runs / "bc-image-cpu-s0" / "results.json").read_text())]).splitlines()[-1]
    assert bc_line.split()[11] == "-"  # BC is not its own reference


def test_sawyer_references_are_success_rates_without_a_random_one(tmp_path):
    row = {**results_row(tmp_path / "sawyer-door" / "medium" / "combo-image-cpu-s0", "combo", env="sawyer-door"),
           "eval_success_rate": 0.5, "eval_success_ci95": 0.2, "dataset_stats": {"return_mean": 11.0,
                                                                                 "success_rate": 0.42}}
    assert reference_points("sawyer-door", row["dataset_stats"], row["run_dir"]) == {"Batch Mean": 0.42}
    assert results_table([row]).splitlines()[-1].split()[9:12] == ["-", "42%", "-"]


def test_result_chart_draws_every_evaluation_and_the_references():
    history = [{"step": s, **walker_eval(v, 4.0)} for s, v in ((1000, 10.0), (2000, 25.0))]
    fig = report.result_chart(history, walker_eval(38.6, 7.3, 20), 3000, {"random": 4.4, "Batch Mean": 49.5})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["final 38.6 ±7.3\n(20 episodes)", "random 4.4", "Batch Mean 49.5"]
    assert list(ax.lines[0].get_xdata()) == [1000, 2000, 3000]  # the final evaluation on the curve
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 49.5  # nothing cut: the band, the references
    import matplotlib.pyplot as plt

    plt.close(fig)
