"""The world-model probe: recovers a state that is there, finds none in noise, and runs after the stage."""

import json

import numpy as np
import pytest
import torch

from latent_combo.cli import main as cli
from latent_combo.probe import fit_state_probe, r2_per_dim, separability


def synthetic(n=3000, state_dim=5, feat_dim=40, seed=0):
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(n, state_dim)) * rng.uniform(0.1, 10, state_dim)
    return rng, state, state @ rng.normal(size=(state_dim, feat_dim)) + 0.01 * rng.normal(size=(n, feat_dim))


def test_probe_reads_a_linear_latent_and_not_noise():
    rng, state, latent = synthetic()
    train, test, dims = slice(0, 2400), slice(2400, None), np.arange(state.shape[1])
    r2 = r2_per_dim(state[test], fit_state_probe(latent[train], state[train]).predict(latent[test]), dims)
    assert r2.min() > 0.99
    noise = rng.normal(size=latent.shape)
    r2 = r2_per_dim(state[test], fit_state_probe(noise[train], state[train]).predict(noise[test]), dims)
    assert abs(r2.mean()) < 0.05


def test_separability_is_chance_for_one_distribution_and_high_for_two():
    rng = np.random.default_rng(0)
    same = [rng.normal(size=(2000, 10)) for _ in range(4)]
    assert abs(separability(*same, rng) - 0.5) < 0.05
    shifted = [x + (1.0 if i % 2 else 0.0) for i, x in enumerate(same)]
    assert separability(*shifted, rng) > 0.9


def test_drift_reads_each_time_window_against_the_variance_of_all_steps():
    from latent_combo.probe import drift_r2

    rng = np.random.default_rng(0)
    step = np.tile(np.arange(1, 151), 4)  # four 150-step episodes: no step reaches the window from 250
    y = rng.normal(size=(len(step), 3))
    pred = y + np.where(step[:, None] >= 100, rng.normal(size=y.shape), 0.0)  # exact until step 100
    out = drift_r2(y, pred, step, np.arange(3))
    assert set(out) == {"state_r2_from_step_1", "state_r2_from_step_24", "state_r2_from_step_100"}
    assert out["state_r2_from_step_1"] == 1.0 and out["state_r2_from_step_24"] == 1.0
    assert out["state_r2_from_step_100"] == pytest.approx(0.0, abs=0.2)  # error variance = the state's: 1 - 1


def test_probe_runs_after_the_world_model_stage(env_datasets, tmp_path, capsys):
    data = env_datasets["sawyer-door"]
    assert cli(["train", "--env", "sawyer-door", "--dataset", str(data), "--preset", "debug",
                "--logdir", str(tmp_path), "--world-model-only"]) == 0
    run = tmp_path / "sawyer-door" / data.name / "combo-image-debug-s0"
    probe = json.loads((run / "probe.json").read_text())["probe"]
    for key in ("state_r2", "state_r2_sample", "state_r2_dims", "state_rmse_dims", "state_r2_hand",
                "reward_rmse_posterior", "reward_rmse_prior", "separability", "state_r2_from_step_1"):
        assert key in probe, key
    assert not (run / "agent.pt").exists()  # stopped after the probe
    # Sawyer's zero padding (11-17) and its goal (36-38, jitter of 1e-5 m) are not scored; R² there is noise.
    assert not {11, 17, 36, 37, 38} & set(probe["dims_scored"]) and {0, 1, 2, 3} <= set(probe["dims_scored"])
    assert all(np.isfinite(v) for k, v in probe.items() if k.startswith("open_loop"))
    capsys.readouterr()
    assert cli(["probe", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state_r2"] == pytest.approx(probe["state_r2"])
    assert cli(["probe", str(run), "--json", "--mlp"]) == 0  # the cached figures plus the MLP's
    again = json.loads(capsys.readouterr().out)
    assert again["state_r2"] == pytest.approx(probe["state_r2"]) and np.isfinite(again["state_r2_mlp"])


def test_probe_skips_a_dataset_without_state(tmp_path, capsys):
    from conftest import make_episode

    for i in range(3):
        ep = make_episode(12, seed=i)
        del ep["state"]
        np.savez_compressed(tmp_path / f"{i}-12.npz", **ep)
    from latent_combo.config import resolve
    from latent_combo.data import OfflineDataset
    from latent_combo.probe import format_probe, run_probe
    from latent_combo.world_model import WorldModel

    cfg = resolve("debug")
    ds = OfflineDataset(tmp_path)
    wm = WorldModel(cfg.wm, "image", ds.action_dim)
    out = run_probe(wm, ds, "walker-walk", torch.device("cpu"))
    assert set(out) == {"skipped"} and "no 'state'" in out["skipped"]
    assert format_probe(out).startswith("probe skipped")


def random_walk_dataset(directory, episodes=8, length=30):
    """Episodes whose state is a random walk (every dimension varies within each held-out episode)."""
    from conftest import make_episode

    from latent_combo.data import save_episode, write_metadata

    rng = np.random.default_rng(0)
    for i in range(episodes):
        ep = make_episode(length, seed=i + 1)
        ep["state"] = rng.normal(size=ep["state"].shape).cumsum(0).astype(np.float32)
        ep["image"] = rng.integers(0, 255, ep["image"].shape, dtype=np.uint8)
        save_episode(directory / f"ep_{i:04d}.npz", ep)
    write_metadata(directory, env="walker-walk", flavour="test")
    return directory


def test_probe_headline_reads_the_posterior_mean_and_keeps_the_sample_figure(tmp_path):
    from latent_combo.config import resolve
    from latent_combo.data import OfflineDataset
    from latent_combo.probe import encode_for_probe, format_probe, run_probe
    from latent_combo.world_model_training import build_world_model

    ds = OfflineDataset(random_walk_dataset(tmp_path / "ds"))
    torch.manual_seed(0)
    wm = build_world_model(resolve("debug"), ds, torch.device("cpu"))
    torch.manual_seed(0)
    data = encode_for_probe(wm, ds, torch.device("cpu"), np.random.default_rng(0))
    deter = wm.rssm.deter
    # The same filtered h; the mean of z beside the sample drawn from it.
    np.testing.assert_array_equal(data["post_mean"][:, :deter], data["post"][:, :deter])
    with torch.no_grad():  # the posterior's mean from episode 0's h and frames
        rssm, image = wm.rssm, torch.as_tensor(ds.episode(0)["image"][None, 1:])
        embed, h = wm.embed(wm.target({"image": image}))[0], torch.as_tensor(data["post"][:30, :deter])
        mean = rssm._stats(rssm.post_out(torch.nn.functional.elu(rssm.post_h(h) + rssm.post_e(embed))))[0]
    np.testing.assert_allclose(data["post_mean"][:30, deter:], mean.numpy(), atol=1e-5)
    assert not np.allclose(data["post_mean"][:, deter:], data["post"][:, deter:])

    out = run_probe(wm, ds, "walker-walk", torch.device("cpu"))
    assert np.isfinite(out["state_r2"]) and np.isfinite(out["state_r2_sample"])
    assert out["state_r2"] != out["state_r2_sample"]
    assert out["state_r2"] == pytest.approx(np.mean(out["state_r2_dims"]))  # the per-dimension figures are the mean's
    text = format_probe(out)
    assert f"state R² {out['state_r2']:.3f}" in text
    assert f"sample of z (what the agent sees) {out['state_r2_sample']:.3f}" in text
    assert "sample 0" not in text.splitlines()[0]  # not listed among the groups


def test_a_probe_json_from_before_the_mean_headline_is_recomputed(tmp_path):
    """A cached probe.json whose state_r2 read a sample of z (no state_r2_sample beside it) is not served as the
    posterior-mean figure."""
    from torch.utils.tensorboard import SummaryWriter

    from latent_combo.config import resolve
    from latent_combo.data import OfflineDataset
    from latent_combo.runs import save_checkpoint
    from latent_combo.world_model_training import build_world_model, probe_world_model

    cfg = resolve("debug")
    ds = OfflineDataset(random_walk_dataset(tmp_path / "ds"))
    wm = build_world_model(cfg, ds, torch.device("cpu"))
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"model": wm.state_dict(), "step": 4}, run / "wm.pt")
    (run / "probe.json").write_text(json.dumps({"wm_step": 4, "probe": {"state_r2": 0.5}}))
    writer = SummaryWriter(str(run))
    fresh = probe_world_model(cfg, wm, ds, run, writer, torch.device("cpu"))
    assert "state_r2_sample" in fresh and fresh["state_r2"] != 0.5
    assert probe_world_model(cfg, wm, ds, run, writer, torch.device("cpu")) == fresh  # then cached
    writer.close()
