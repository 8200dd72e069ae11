"""Meeting other tools: V-D4RL folders as published, Gymnasium ids and the env checker, Minari export."""

import json
import warnings

import numpy as np
import pytest
from conftest import make_episode

from latent_combo.cli import main as cli
from latent_combo.data import DatasetError, DatasetWarning, OfflineDataset, read_metadata


def vd4rl_folder(directory, longer_flags: bool, episodes: int = 3, length: int = 12, action_dim: int = 6):
    """V-D4RL's layout: no manifest, no state, file names `{index}-{length}.npz`; optionally the flag arrays
    one row longer than image / action / reward, as some published files are."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(episodes):
        ep = make_episode(length, action_dim=action_dim, seed=i + 1)
        del ep["state"]
        if longer_flags:
            n = length + 1
            ep["is_first"] = np.arange(n + 1) == 0
            ep["is_last"] = np.arange(n + 1) == n  # the end marker sits in the extra row
            ep["is_terminal"] = np.zeros(n + 1, bool)
        np.savez_compressed(directory / f"{i}-{length}.npz", **ep)
    return directory


@pytest.mark.parametrize("longer", [False, True])
def test_vd4rl_folder_loads_as_published(tmp_path, longer):
    d = vd4rl_folder(tmp_path / "vd4rl", longer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = OfflineDataset(d)
    aligned = [w for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(aligned) == (1 if longer else 0)  # one warning for the dataset, not one per file
    if longer:
        assert "3 of the episode files" in str(aligned[0].message)
    assert ds.state_dim is None and len(ds) == 3 and ds.num_transitions == 36
    ep = ds.episode(0)
    assert len(ep["is_last"]) == len(ep["reward"]) == 13
    assert ep["is_first"][0] and ep["is_last"][-1] and ep["is_last"].sum() == 1  # the end marker kept


def test_vd4rl_broken_file_is_named(tmp_path):
    d = vd4rl_folder(tmp_path / "vd4rl", longer_flags=True)
    ep = make_episode(12, seed=9)
    del ep["state"]
    ep["is_last"] = np.zeros(16, bool)  # neither the data's length nor one more
    np.savez_compressed(d / "7-12.npz", **ep)
    with pytest.raises(DatasetError, match=r"7-12.npz: 'is_last' has 16 rows; expected 13"):
        OfflineDataset(d)


def test_verify_without_manifest_checks_structure_and_manifest_writes_one(tmp_path, capsys):
    d = vd4rl_folder(tmp_path / "vd4rl", longer_flags=True)
    assert cli(["verify", str(d)]) == 0
    out = capsys.readouterr().out
    assert "no metadata.json, so no checksums" in out and "3 of 3 episode files is valid (3 with flag" in out
    assert cli(["manifest", str(d), "--env", "cheetah-run"]) == 0
    meta = read_metadata(d)
    assert meta["render"] == "default" and meta["env"] == "cheetah-run" and len(meta["files"]) == 3
    assert cli(["verify", str(d)]) == 0 and "every file matches" in capsys.readouterr().out
    assert cli(["manifest", str(d)]) == 2  # never over an existing manifest without --force
    (d / "0-12.npz").write_bytes(b"broken")
    assert cli(["verify", str(d)]) == 1
    assert "0-12.npz" in capsys.readouterr().err


def test_verify_without_manifest_names_a_broken_file(tmp_path, capsys):
    d = vd4rl_folder(tmp_path / "vd4rl", longer_flags=False)
    (d / "1-12.npz").write_bytes(b"not an npz")
    assert cli(["verify", str(d)]) == 1
    captured = capsys.readouterr()
    assert "1-12.npz: not an episode file" in captured.err and "2 of 3 episode files is valid" in captured.out


def test_render_settings_of_a_dataset(tmp_path, tiny_dataset):
    from latent_combo.data import render_settings, write_metadata

    assert render_settings(vd4rl_folder(tmp_path / "v", False)) == "default"  # V-D4RL: MuJoCo's defaults
    assert render_settings(tiny_dataset) == "fast"  # ours, written before `render` was recorded
    write_metadata(tiny_dataset, render="default")
    assert render_settings(tiny_dataset) == "default"


def test_render_settings_change_the_frames():
    from latent_combo.envs import make_env

    fast = make_env("cheetah-run", render_settings="fast").reset(seed=0)[0]["image"]
    default = make_env("cheetah-run", render_settings="default").reset(seed=0)[0]["image"]
    assert fast.shape == default.shape == (64, 64, 3)
    assert np.abs(fast.astype(int) - default).mean() > 0.5  # shadows and anti-aliasing show
    with pytest.raises(ValueError, match="unknown render settings 'pretty'"):
        make_env("walker-walk", render_settings="pretty")


@pytest.mark.parametrize("gym_id", ["latent_combo/WalkerWalk-v0", "latent_combo/CheetahRun-v0",
                                    "latent_combo/HumanoidWalk-v0", "latent_combo/SawyerDoor-v0",
                                    "latent_combo/SawyerDoorClose-v0"])
def test_gymnasium_ids_pass_the_env_checker(gym_id):
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import latent_combo  # noqa: F401  (registers the ids)

    env = gymnasium.make(gym_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=False)
    # The only complaint allowed: the proprioceptive state is unbounded (as in Gymnasium's MuJoCo envs).
    assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and isinstance(info, dict)
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert obs in env.observation_space and isinstance(reward, float)
    assert env.render().shape == (64, 64, 3)
    env.close()


def test_env_spaces_match_the_declared_dims():
    from latent_combo.envs import DMC_TASKS, make_env

    for env_id, (_, _, action_dim, state_dim) in DMC_TASKS.items():
        env = make_env(env_id, render=False)
        obs, _ = env.reset(seed=0)
        assert env.action_space.shape == (action_dim,) and obs["state"].shape == (state_dim,)
        assert "image" not in obs and "image" not in env.observation_space.spaces


def test_cheetah_without_a_folder_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "--env", "cheetah-run", "--preset", "debug"]) == 2
    assert "pass a V-D4RL folder with --dataset PATH" in capsys.readouterr().err


@pytest.mark.parametrize("longer", [False, True])
def test_debug_combo_trains_on_a_vd4rl_folder_and_evaluates_in_cheetah(tmp_path, longer):
    d = vd4rl_folder(tmp_path / "cheetah_run" / "medium", longer, episodes=3, length=12)
    assert cli(["train", "--env", "cheetah-run", "--dataset", str(d), "--preset", "debug",
                "--logdir", str(tmp_path / "runs")]) == 0
    results = json.loads(next((tmp_path / "runs").rglob("results.json")).read_text())
    assert results["env"] == "cheetah-run" and results["eval_render"] == "default"
    assert results["probe"]["skipped"].endswith("nothing to probe") and "eval_normalized_score" in results


def test_minari_export_round_trip(tiny_dataset, tmp_path, monkeypatch, capsys):
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from latent_combo.data import save_episode, write_metadata

    d = tmp_path / "two"
    for i in range(2):
        save_episode(d / f"ep_{i:06d}.npz", make_episode(9 + i, state_dim=4, seed=i + 1))
    write_metadata(d, env="walker-walk", flavour="test")
    assert cli(["export", str(d), "--minari", "latent_combo/test/two-v0", "--lossless"]) == 0
    assert "2 episodes, 19 steps, loaded back" in capsys.readouterr().out
    import minari

    m = minari.load_dataset("latent_combo/test/two-v0")
    ep = next(iter(m.iterate_episodes()))
    original = OfflineDataset(d).episode(0)
    np.testing.assert_array_equal(ep.actions, original["action"][1:])
    np.testing.assert_array_equal(ep.observations["image"], original["image"])  # lossless: exact pixels
    assert ep.truncations[-1] and not ep.terminations.any()
