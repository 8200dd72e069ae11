"""The offline rule's checks: a critic below the floor of any return, or still moving, is never picked."""

import json

import numpy as np
import pytest
import yaml

from latent_combo import selection
from latent_combo.cli import main as cli
from latent_combo.config import resolve, to_dict
from latent_combo.data import episode_stats


def test_floor_is_the_smallest_discounted_return_of_the_data():
    # Row 0 is the reset: its reward (here -9) is no step's reward and must not set the floor.
    stats = episode_stats([np.array([-9.0, 0.0, 1.0]), np.array([0.0, 0.5, 0.25])], "walker-walk")
    assert stats["reward_min"] == 0.0
    assert selection.q_floor(stats["reward_min"], 0.99) == 0.0
    assert selection.q_floor(-0.5, 0.9) == pytest.approx(-5.0)
    assert selection.q_floor(None, 0.99) is None


def test_final_q_averages_the_last_tenth_of_the_trace():
    trace = [[s, float(s)] for s in range(0, 10001, 250)]
    assert selection.final_q(trace) == pytest.approx(np.mean([9000, 9250, 9500, 9750, 10000]))
    assert selection.final_q([]) is None and selection.final_q(None) is None


def test_pick_passes_over_settings_below_the_floor_or_still_moving():
    assert selection.exclusions(-20.0, -0.3, 0.0) == ["Q on data -20 below the floor 0",
                                                      "Q on data still moving (-30.0% over the last fifth)"]
    assert selection.exclusions(5.0, 0.05, 0.0) == []
    assert selection.exclusions(None, None, None) == []  # older runs: the checks they cannot feed are left out
    table = [{"regulariser": -0.5, "excluded": ["Q on data -20 below the floor 0"]},
             {"regulariser": -0.1, "excluded": []}, {"regulariser": 0.2, "excluded": []}]
    assert selection.pick(table) == (1, False)  # the paper's rule alone would take row 0
    assert selection.pick(table[:1]) == (None, False)


def test_when_nothing_has_levelled_off_the_pick_falls_back_to_the_floor_check_alone():
    moving = selection.exclusions(1.5, 0.11, 0.0)
    below = selection.exclusions(-2.6, -0.17, 0.0)
    table = [{"regulariser": 0.16, "excluded": moving}, {"regulariser": 0.02, "excluded": moving},
             {"regulariser": -0.02, "excluded": below}]
    assert selection.pick(table) == (1, True)  # row 2 has the lowest regulariser but is below the floor
    assert selection.pick(table[2:]) == (None, False)


def test_select_leaves_out_a_critic_below_zero_on_nonnegative_rewards(tmp_path, capsys):
    def run(name, reg, beta, q_end):
        d = tmp_path / name
        d.mkdir()
        cfg = resolve("debug", overrides={"agent.beta": beta})
        (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
        trace = [[s, q_end] for s in range(250, 5001, 250)]
        (d / "results.json").write_text(json.dumps({"final_regulariser": reg, "q_data_trace": trace,
                                                    "q_data_rise_last_fifth": 0.0, "algo": "combo",
                                                    "dataset_stats": {"reward_min": 0.0}}))
        return str(d)

    dirs = [run("a", -0.4, 1.0, -25.0), run("b", -0.1, 0.1, 12.0)]
    assert cli(["select", *dirs]) == 0
    out = capsys.readouterr().out
    assert "not pickable: Q on data -25 below the floor 0" in out
    assert out.strip().endswith("pick: agent.beta=0.1 agent.real_ratio=0.5")
    assert cli(["select", dirs[0]]) == 1  # nothing pickable: said, and a failing exit status
    assert "pick: none" in capsys.readouterr().out
