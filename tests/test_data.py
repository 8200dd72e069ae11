import json

import numpy as np
import pytest
from conftest import make_episode

from latent_combo.cli import main as cli
from latent_combo.data import DatasetError, OfflineDataset, episode_stats, load_episode, save_episode, verify


def test_round_trip(tmp_path):
    ep = make_episode(9)
    save_episode(tmp_path / "a.npz", ep)
    back = load_episode(tmp_path / "a.npz")
    assert set(back) == set(ep)
    for k in ep:
        np.testing.assert_array_equal(back[k], ep[k])
        assert back[k].dtype == ep[k].dtype
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_truncated_file_named(tmp_path):
    save_episode(tmp_path / "a.npz", make_episode(9))
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="a.npz"):
        load_episode(tmp_path / "a.npz")


def test_corrupt_file_named(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(DatasetError, match="junk.npz"):
        load_episode(tmp_path / "junk.npz")


def test_wrong_shape_and_missing_key_named(tmp_path):
    ep = make_episode(5)
    ep["image"] = ep["image"][:, :32]
    np.savez_compressed(tmp_path / "shape.npz", **ep)
    with pytest.raises(DatasetError, match=r"shape.npz.*'image'"):
        load_episode(tmp_path / "shape.npz")
    ep = make_episode(5)
    del ep["reward"]
    np.savez_compressed(tmp_path / "key.npz", **ep)
    with pytest.raises(DatasetError, match=r"key.npz.*missing keys \['reward'\]"):
        load_episode(tmp_path / "key.npz")


def test_windows_never_cross_episodes(tiny_dataset):
    ds = OfflineDataset(tiny_dataset)
    assert len(ds) == 5 and ds.num_transitions == 10 + 14 + 7 + 20 + 12
    rng = np.random.default_rng(0)
    batch = ds.sample_sequences(512, 8, rng)
    assert batch["image"].shape == (512, 8, 64, 64, 3)
    episode_id, t = batch["state"][..., 0], batch["state"][..., 1]
    assert (episode_id == episode_id[:, :1]).all()  # one episode per window
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)  # consecutive rows
    # Sampling is uniform over valid windows: the 8-row episode has exactly one of the 44.
    assert set(np.unique(episode_id[:, 0])) == {1, 2, 3, 4, 5}
    assert len(ds.valid_starts(8)) == 4 + 8 + 1 + 14 + 6


def test_sampling_is_seeded(tiny_dataset):
    ds = OfflineDataset(tiny_dataset)
    a = ds.sample_sequences(16, 5, np.random.default_rng(7))
    b = ds.sample_sequences(16, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(a["action"], b["action"])


def test_too_long_window_errors(tiny_dataset):
    with pytest.raises(DatasetError, match="no episode has 50 rows"):
        OfflineDataset(tiny_dataset).sample_sequences(2, 50, np.random.default_rng(0))


def test_verify_catches_modified_file(tiny_dataset, capsys):
    assert verify(tiny_dataset) == []
    assert cli(["verify", str(tiny_dataset)]) == 0
    victim = tiny_dataset / "ep_0002.npz"
    save_episode(victim, make_episode(7, seed=99))
    problems = verify(tiny_dataset)
    assert len(problems) == 1 and "ep_0002.npz" in problems[0]
    assert cli(["verify", str(tiny_dataset)]) == 1
    assert "ep_0002.npz" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="ep_0002.npz"):
        OfflineDataset(tiny_dataset)


def test_verify_missing_and_extra_files(tiny_dataset):
    (tiny_dataset / "ep_0000.npz").unlink()
    save_episode(tiny_dataset / "ep_0099.npz", make_episode(3))
    problems = "\n".join(verify(tiny_dataset))
    assert "ep_0000.npz: listed" in problems and "ep_0099.npz: present" in problems


def test_info_json(tiny_dataset, capsys):
    assert cli(["info", str(tiny_dataset), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    ds = OfflineDataset(tiny_dataset)
    returns = [ds.episode(i)["reward"][1:].sum() for i in range(len(ds))]
    assert row["episodes"] == 5 and row["transitions"] == 63
    assert row["return_mean"] == pytest.approx(np.mean(returns), rel=1e-5)
    assert row["return_max"] == pytest.approx(np.max(returns), rel=1e-5)
    meta = json.loads((tiny_dataset / "metadata.json").read_text())
    assert meta["total_episodes"] == 5 and meta["total_steps"] == 63 and len(meta["files"]) == 5


def test_door_close_success_needs_the_door_to_close_after_being_open():
    # Relabelled door-open data: the door starts closed (rewarded rows 1-3), then the behaviour opens it.
    opened = np.array([0, 1, 1, 1, 0, 0, 0], np.float32)
    reclosed = np.array([0, 1, 1, 0, 0, 1, 1], np.float32)  # swung shut again: what evaluation calls success
    never = np.zeros(7, np.float32)
    close = episode_stats([opened, reclosed, never], "sawyer-door-close")
    assert close["success_rate"] == pytest.approx(1 / 3)
    # door-open counts any rewarded step; walker has no success at all
    assert episode_stats([opened, reclosed, never], "sawyer-door")["success_rate"] == pytest.approx(2 / 3)
    assert "success_rate" not in episode_stats([opened], "walker-walk")
    assert close["return_mean"] == pytest.approx((3 + 4 + 0) / 3)


def test_vd4rl_folder_without_metadata_or_state(tmp_path):
    for i in range(3):
        ep = make_episode(12, seed=i)
        del ep["state"]
        np.savez_compressed(tmp_path / f"{i}-12.npz", **ep)
    ds = OfflineDataset(tmp_path)
    assert ds.state_dim is None and "state" not in ds.sample_sequences(2, 4, np.random.default_rng(0))
    assert cli(["info", str(tmp_path)]) == 0
