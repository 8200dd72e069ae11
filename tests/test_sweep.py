"""`latent-combo sweep` on a local Ray: trials finish, the world model is trained once, reruns resume."""

import json

import pytest

from latent_combo.cli import main as cli

ray = pytest.importorskip("ray")


def test_two_trial_sweep_shares_one_world_model_and_resumes(env_datasets, tmp_path, capsys):
    data = env_datasets["walker-walk"]
    args = ["sweep", "--dataset", str(data), "--preset", "debug", "--seeds", "0", "--cpus-per-trial", "1",
            "--logdir", str(tmp_path / "runs"), "--storage", str(tmp_path / "tune")]
    # Interrupted after its first trial: only combo has run.
    assert cli([*args, "--algos", "combo"]) == 0
    wm_dir = tmp_path / "runs" / "world-models" / "walker-walk" / data.name / "combo-image-debug-s0"
    combo = tmp_path / "runs" / "preset" / "walker-walk" / data.name / "combo-image-debug-s0"
    first = {p: p.stat().st_mtime_ns for p in (wm_dir / "wm.pt", combo / "results.json")}
    capsys.readouterr()
    assert cli([*args, "--algos", "combo", "bc"]) == 0
    out = capsys.readouterr().out
    bc = combo.parent / "bc-image-debug-s0"
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # neither retrained nor re-evaluated
    assert (bc / "wm.pt").read_bytes() == (wm_dir / "wm.pt").read_bytes()  # the seed's one world model
    table = json.loads((tmp_path / "runs" / "sweep.json").read_text())["table"]
    assert [t["algo"] for t in table] == ["combo", "bc"]
    assert "combo" in out and "bc" in out
