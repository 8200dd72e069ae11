"""bench/quality.py is a thin caller of `latent-combo sweep`: its flags map onto the sweep's."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flags_map_onto_the_sweep(quality):
    a = quality.parse(["--algos", "combo", "bc", "--seeds", "0", "1", "--sweep", "agent.beta=0.5,1,5",
                       "--workers", "2", "threads=1"])
    assert a.grid == ["agent.beta=0.5,1,5"] and a.obs == "state" and a.logdir == "runs/quality"
    assert a.algos == ["combo", "bc"] and a.seeds == [0, 1] and a.overrides == ["threads=1"]
    assert a.cpus_per_trial >= 1


def test_reference_rows_flag_takes_one_list_and_leaves_the_overrides(quality, capsys):
    a = quality.parse(["--reference", "td3bc,iql", "agent.steps=20000", "agent.tau=0.02"])
    assert a.reference == ["td3bc", "iql"] and a.overrides == ["agent.steps=20000", "agent.tau=0.02"]
    with pytest.raises(SystemExit):
        quality.parse(["--reference", "td3bc,sac"])
    assert "expected a comma-separated list of td3bc, cql, iql, bc" in capsys.readouterr().err


def test_bad_sweep_item_names_the_flag():
    from latent_combo.sweep import parse_grid

    with pytest.raises(ValueError, match="--grid 'agent.beta': expected .algo:.key=v1,v2"):
        parse_grid(["agent.beta"])
    with pytest.raises(ValueError, match="only agent.. keys"):
        parse_grid(["wm.steps=1,2"])
    with pytest.raises(ValueError, match="unknown algorithm 'sac'"):
        parse_grid(["sac:agent.beta=1"])


def test_grid_settings_go_to_the_algorithms_they_concern():
    from latent_combo.sweep import parse_grid, settings_for

    grid = parse_grid(["agent.beta=0.1,1", "agent.lompo_lambda=1,5"])
    assert settings_for("combo", grid) == [{"agent.beta": 0.1}, {"agent.beta": 1}]
    assert settings_for("lompo", grid) == [{"agent.lompo_lambda": 1}, {"agent.lompo_lambda": 5}]
    assert settings_for("bc", grid) == [{}]


def test_an_algorithm_prefix_gives_one_algorithm_its_own_values():
    from latent_combo.sweep import parse_grid, settings_for

    grid = parse_grid(["combo:agent.beta=0.3", "cql:agent.beta=0.1,1", "agent.lompo_lambda=0.5"])
    assert settings_for("combo", grid) == [{"agent.beta": 0.3}]
    assert settings_for("cql", grid) == [{"agent.beta": 0.1}, {"agent.beta": 1}]
    assert settings_for("lompo", grid) == [{"agent.lompo_lambda": 0.5}]
    assert settings_for("bc", grid) == [{}]
    with pytest.raises(ValueError, match="agent.beta to cql twice"):
        settings_for("cql", parse_grid(["agent.beta=1", "cql:agent.beta=0.1"]))
