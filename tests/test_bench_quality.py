"""bench/quality.py's bookkeeping (which runs, which world model, the sweep's pick), with fake training."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quality(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import latent_combo.runs

    monkeypatch.setattr(latent_combo.runs, "dataset_dir", lambda cfg, build=None: tmp_path / "medium-replay")
    return mod


def fake_train(calls):
    def train(a, algo, seed, world_model=None, setting=None):
        calls.append((algo, seed, world_model, setting))
        beta = (setting or {}).get("agent.beta", 1.0)
        # Lower regulariser with higher beta; the best score at beta 1.
        return {"algo": algo, "seed": seed, "eval_normalized_score": 10.0 - abs(beta - 1.0) + seed,
                "final_regulariser": None if algo == "bc" else 1.0 / beta, "wall_time_s": 1.0,
                "run_dir": f"{algo}-{seed}-{beta}",
                "dataset_stats": {"episodes": 3, "return_mean": 100.0, "return_max": 200.0}}
    return train


def test_sweep_reuses_the_seed_world_model_and_reports_pick_and_best(quality, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(quality, "train", fake_train(calls))
    quality.main(["--algos", "combo", "bc", "--seeds", "0", "1", "--logdir", str(tmp_path),
                  "--sweep", "agent.beta=0.5,1,5", "threads=1", "agent.beta=1"])
    sweeps = [c for c in calls if c[3] is not None]
    # An override after --sweep is an override for every run, not a second grid key.
    assert all(set(c[3]) == {"agent.beta"} for c in sweeps)
    # beta = 1 is the main runs' value (the override): the main combo run stands for it, not a second training.
    assert sorted((c[1], c[3]["agent.beta"]) for c in sweeps) == [(s, b) for s in (0, 1) for b in (0.5, 5)]
    # Every sweep run reuses the world model of its seed's first algo.
    assert all(c[2] == quality.run_dir(namespace(tmp_path), "combo", c[1]) for c in sweeps)
    out = capsys.readouterr().out
    assert "agent.beta=5" in out.split("<- pick")[0].splitlines()[-1]
    assert "agent.beta=1 " in out.split("<- best score")[0].splitlines()[-1]
    assert "differs from the best evaluated score" in out
    saved = json.loads((tmp_path / "quality-sweep.json").read_text())
    assert [r["algo"] for r in saved["table"]] == ["combo", "bc"] and len(saved["sweep"]) == 3


def namespace(tmp_path):
    """As much of quality.main's parsed arguments as run_dir reads."""
    import argparse

    return argparse.Namespace(logdir=str(tmp_path), env="walker-walk", data_path=str(tmp_path / "medium-replay"),
                              obs="state", preset="cpu")


def test_bad_sweep_item_names_the_flag(quality):
    with pytest.raises(SystemExit, match="--sweep 'agent.beta': expected key=v1,v2"):
        quality.parse_sweep(["agent.beta"])


def test_no_sweep_trains_and_prints_no_sweep(quality, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(quality, "train", fake_train(calls))
    quality.main(["--algos", "combo", "bc", "--seeds", "0", "--logdir", str(tmp_path)])
    assert [c[0] for c in calls] == ["combo", "bc"] and "sweep" not in capsys.readouterr().out
