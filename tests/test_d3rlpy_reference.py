"""bench/d3rlpy_reference.py: d3rlpy's rows on the dataset's raw states, aligned as d3rlpy expects."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("d3rlpy_reference", ROOT / "bench" / "d3rlpy_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_pair_each_state_with_the_action_taken_from_it(ref, tiny_dataset):
    """Our step t holds the action and reward that led to state t; d3rlpy's transition from state t must carry
    action[t + 1], reward[t + 1] and state t + 1, and never the episode's last row as a start."""
    from latent_combo.data import OfflineDataset

    dataset = ref.mdp_dataset(tiny_dataset)
    ours = OfflineDataset(tiny_dataset)
    assert dataset.transition_count == sum(len(ours.episode(i)["reward"]) - 1 for i in range(len(ours)))
    ep, mine = dataset.episodes[1], ours.episode(1)
    t = 4
    picked = dataset.transition_picker(ep, t)
    np.testing.assert_array_equal(picked.observation, mine["state"][t])
    np.testing.assert_array_equal(picked.action, mine["action"][t + 1])
    assert picked.reward[0] == pytest.approx(mine["reward"][t + 1])
    np.testing.assert_array_equal(picked.next_observation, mine["state"][t + 1])
    assert not ep.terminated and picked.terminal == 0.0  # a time-limit end keeps bootstrapping


def test_a_run_trains_evaluates_and_is_reused(ref, env_datasets, tmp_path, monkeypatch):
    data = env_datasets["walker-walk"]
    result = ref.run("bc", str(data), "walker-walk", steps=5, seed=0, episodes=1, logdir=str(tmp_path))
    saved = json.loads((tmp_path / "bc-s0" / "results.json").read_text())
    assert saved == result and result["library"] == "d3rlpy 2.8.1" and len(result["eval_returns"]) == 1
    assert result["eval_normalized_score"] == pytest.approx(result["eval_returns"][0] / 10)
    monkeypatch.setattr(ref, "make_algo", lambda *a: pytest.fail("a finished run was retrained"))
    assert ref.run("bc", str(data), "walker-walk", steps=5, seed=0, episodes=1, logdir=str(tmp_path)) == result
    rows = ref.table([result, {**result, "seed": 1, "eval_normalized_score": 0.0}])
    assert rows[0]["algo"] == "d3rlpy BC" and rows[0]["scores"] == [result["eval_normalized_score"], 0.0]


def test_quality_refuses_reference_rows_without_states():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--obs", "image", "--reference",
                          "td3bc"], capture_output=True, text=True)
    assert out.returncode != 0 and "use it with --obs state" in out.stderr
