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
    assert all(t["model_return"] is not None for t in table)  # every row, BC's too: the estimate's pick beside
    assert sum(bool(t.get("model_return_pick")) for t in table) == 1 and "<- model-return pick" in out
    assert "combo" in out and "bc" in out
    assert cli([*args, "--algos", "bc"]) == 0  # another first algorithm: the same world model, not a new one
    assert [d.name for d in wm_dir.parent.iterdir()] == ["combo-image-debug-s0"]
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())


def test_compare_reads_intervals_over_seeds_against_each_row_and_the_batch_mean():
    from latent_combo.sweep import compare

    def row(algo, mean, ci, n=3):
        return {"algo": algo, "setting": "preset", "mean": mean, "ci95": ci, "scores": [mean] * n}

    table = [row("combo", 40.0, 3.0), row("bc", 30.0, 4.0), row("cql", 35.0, 3.0), row("lmbpo", 45.0, 2.5)]
    lines = compare(table, batch_mean=49.0)
    assert lines[0].endswith("above, intervals apart")  # 37..43 against 26..34
    assert lines[1].endswith("above, intervals overlap")  # 37..43 against 32..38
    assert lines[2].endswith("below, intervals overlap")  # 37..43 against 42.5..47.5
    assert lines[3].endswith("below")
    assert compare(table, batch_mean=41.0)[3].endswith("level (the Batch Mean is inside its interval)")
    # Equal means (sawyer expert: 100% on every seed for every algorithm) read level, not below.
    assert compare([row("combo", 1.0, 0.0), row("bc", 1.0, 0.0)], 1.0)[0].endswith("level, intervals overlap")
    assert compare([row("combo", 40.0, 0.0, n=1), row("bc", 30.0, 0.0, n=1)], 49.0) == []


def test_fewer_trials_than_slots_share_the_whole_cores():
    from latent_combo.sweep import cpus_for

    assert cpus_for(1, 1.0, 2.0) == 2.0  # a tuning seed's lone world model gets both cores
    assert cpus_for(3, 1.0, 2.0) == 1.0  # more trials than slots: the asked share
    assert cpus_for(2, 1.0, 2.0) == 1.0
    assert cpus_for(3, 2.0, 16.0) == 5.0  # whole cores, split evenly
    assert cpus_for(1, 4.0, 2.0) == 4.0  # never below the asked share


def test_trials_sharing_the_cores_sleep_idle_threads_and_a_lone_one_spins():
    from latent_combo.sweep import omp_env

    assert omp_env(shared=True) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert omp_env(shared=False) == {"GOMP_SPINCOUNT": "10000"}
