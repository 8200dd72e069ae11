"""Errors that say what to do: each names the file / key / flag, what was found and the fix (issue 39).
Plus the README's quick commands that take seconds, run as a user types them, so the guide cannot rot."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode

from latent_combo.cli import main as cli
from latent_combo.config import resolve
from latent_combo.data import save_episode, write_metadata
from latent_combo.runs import save_config

EPISODE_KEYS = ("image uint8 (T+1, 64, 64, 3)", "action float32 (T+1, action_dim)", "reward float32 (T+1,)",
                "discount float32 (T+1,)", "is_first bool (T+1,)", "is_last bool (T+1,)",
                "is_terminal bool (T+1,)", "state float32 (T+1, state_dim) (optional)")


@pytest.fixture
def trains(monkeypatch):
    """`train` up to pipeline.run: the configs it would have trained, without training."""
    seen = []

    def run(cfg, *args, **kwargs):
        seen.append(cfg)
        return {"run_dir": "never", "probe": {}, "wall_time_s": 0.0}

    monkeypatch.setattr("latent_combo.pipeline.run", run)
    return seen


# ----- the dataset's env ---------------------------------------------------------------------------------

def test_the_dataset_env_is_the_default_for_env(tiny_dataset, tmp_path, trains):
    write_metadata(tiny_dataset, env="sawyer-door")
    assert cli(["train", "--dataset", str(tiny_dataset), "--preset", "debug", "--world-model-only"]) == 0
    assert trains[-1].env == "sawyer-door"
    # Without a manifest (a V-D4RL folder) or with a flavour name: walker-walk, as before.
    bare = tmp_path / "vd4rl"
    save_episode(bare / "ep.npz", make_episode(5))
    for dataset in (str(bare), "medium"):
        assert cli(["train", "--dataset", dataset, "--preset", "debug", "--world-model-only"]) == 0
        assert trains[-1].env == "walker-walk"


def test_an_env_that_contradicts_the_dataset_is_refused_naming_both(tiny_dataset, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["train", "--env", "sawyer-door", "--dataset", str(tiny_dataset), "--preset", "debug", "--logdir", str(runs)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f'--env sawyer-door, but {tiny_dataset / "metadata.json"} says "env": "walker-walk"' in err
    assert "pass --env walker-walk" in err and "or a sawyer-door dataset" in err
    assert not runs.exists()


def test_probe_on_a_dataset_of_another_env_is_refused(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "runs" / "sawyer-door" / "ds" / "combo-image-debug-s0"
    run.mkdir(parents=True)
    save_config(resolve("debug", "sawyer-door"), run)
    for command in ("probe", "analyse"):
        assert cli([command, str(run), "--dataset", str(tiny_dataset)]) == 2
        err = capsys.readouterr().err
        assert f'--dataset {tiny_dataset}: its metadata.json says "env": "walker-walk"' in err
        assert "is sawyer-door's; pass a sawyer-door dataset, or no --dataset" in err


# ----- bad datasets: named, with what a valid episode holds, and no run folder left behind ---------------

def test_a_text_file_renamed_npz_is_named_with_what_an_episode_holds(tmp_path, capsys):
    d = tmp_path / "ds"
    save_episode(d / "ep_0000.npz", make_episode(5))  # no manifest, as a V-D4RL folder
    (d / "notes.npz").write_text("these are my notes\n")
    runs = tmp_path / "runs"
    for args in (["train", "--dataset", str(d), "--preset", "debug", "--logdir", str(runs)],
                 ["info", str(d)], ["verify", str(d)]):
        assert cli(args) in (1, 2)  # verify reports (1); the others stop (2)
        err = capsys.readouterr().err
        assert f"{d / 'notes.npz'}: not an episode file: not a .npz (zip) archive" in err
        assert all(k in err for k in EPISODE_KEYS), err
        assert "pickle" not in err
    assert not runs.exists()


def test_an_episode_of_python_objects_is_refused_unloaded(tmp_path, capsys):
    d = tmp_path / "ds"
    d.mkdir()
    np.savez(d / "objects.npz", image=np.array([{"a": 1}], dtype=object))
    assert cli(["verify", str(d)]) == 1
    err = capsys.readouterr().err
    assert f"{d / 'objects.npz'}: 'image' holds Python objects (pickled data), which are never loaded" in err
    assert "allow_pickle" not in err and EPISODE_KEYS[-1] in err


@pytest.mark.parametrize("fresh", [False, True])
def test_an_empty_dataset_folder_leaves_no_run_folder(tmp_path, capsys, fresh):
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    kept = runs / "walker-walk" / "empty" / "combo-image-debug-s0"
    if fresh:  # --fresh does not delete an existing run for a dataset that cannot be read
        kept.mkdir(parents=True)
        (kept / "config.yaml").write_text("seed: 0\n")
    args = ["train", "--dataset", str(empty), "--preset", "debug", "--logdir", str(runs)] + ["--fresh"] * fresh
    assert cli(args) == 2
    assert f"{empty}: no episode .npz files; a dataset folder holds one per episode" in capsys.readouterr().err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == (
        [Path("walker-walk"), Path("walker-walk/empty"), kept.relative_to(runs), kept.relative_to(runs) / "config.yaml"]
        if fresh else [])


# ----- a folder above runs --------------------------------------------------------------------------------

def test_eval_probe_analyse_on_a_folder_above_runs_list_the_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    found = [root / "walker-walk" / "ds" / f"combo-image-debug-s{seed}" for seed in (0, 1)]
    for run in found:
        run.mkdir(parents=True)
        save_config(resolve("debug", overrides={"seed": int(run.name[-1])}), run)
    for command in ("eval", "probe", "analyse"):
        for folder in (root, root / "walker-walk"):
            assert cli([command, str(folder)]) == 2
            err = capsys.readouterr().err
            assert f"{folder}: not a run folder (no config.yaml); the 2 run folders below it:" in err
            assert all(f"\n  {run}\n" in err + "\n" for run in found) and "pass one of them" in err
    (tmp_path / "nothing").mkdir()
    assert cli(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run folder (no config.yaml), nor any below it; `latent-combo train` makes one" in \
        capsys.readouterr().err
    assert cli(["eval", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: no such folder; expected a run folder" in capsys.readouterr().err


# ----- help and make --------------------------------------------------------------------------------------

def test_train_help_shows_defaults_and_two_examples(capsys):
    with pytest.raises(SystemExit) as done:
        cli(["train", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "(default: cpu)" in out and "default: combo" in out and "(default: medium)" in out
    assert "default: the dataset folder's (its metadata.json \"env\"), else walker-walk" in out
    assert "latent-combo train --env walker-walk --dataset medium --algo combo --preset cpu" in out
    assert "agent.beta=1 agent.steps=20000" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_tensorboard_binds_localhost_unless_asked():
    def command(*extra):  # -n prints the recipe; -o setup leaves the venv alone
        done = subprocess.run(["make", "-s", "-n", "-o", "setup", "tensorboard", *extra], capture_output=True,
                              text=True, cwd=Path(__file__).parent.parent, check=True)
        return done.stdout.strip()

    assert command() == ".venv/bin/tensorboard --logdir runs --host localhost"
    assert command("TB_HOST=0.0.0.0").endswith("--host 0.0.0.0")


# ----- the README's quick commands ------------------------------------------------------------------------

def test_the_readme_quick_commands_run(tiny_dataset):
    """As typed: the installed `latent-combo` script, in a fresh process."""
    exe = str(Path(sys.executable).parent / "latent-combo")

    def run(*args):
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert all(command in run("--help") for command in ("train", "info", "verify", "eval"))
    assert "examples:" in run("train", "--help")
    assert "Batch Mean" in run("info", str(tiny_dataset))
    assert "every file matches metadata.json" in run("verify", str(tiny_dataset))
