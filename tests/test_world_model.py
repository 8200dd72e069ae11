import dataclasses

import numpy as np
import pytest
import torch

from latent_combo.config import resolve
from latent_combo.data import OfflineDataset
from latent_combo.world_model import WorldModel, state_normaliser, to_torch
from latent_combo.world_model_training import train_world_model

B, T, A = 3, 6, 6


def tiny_cfg(**wm):
    cfg = resolve("debug")
    return dataclasses.replace(cfg, wm=dataclasses.replace(cfg.wm, **wm))


def make_batch(obs="image", state_dim=4, seed=0):
    rng = np.random.default_rng(seed)
    b = {"image": rng.integers(0, 255, (B, T, 64, 64, 3), dtype=np.uint8),
         "state": rng.normal(size=(B, T, state_dim)).astype(np.float32),
         "action": rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
         "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": np.zeros((B, T), bool)}
    b["is_first"][:, 0] = True
    return to_torch(b, "cpu")


def make_wm(obs, cfg=None, state_dim=4):
    cfg = cfg or tiny_cfg()
    return WorldModel(cfg.wm, obs, A, state_dim, np.zeros(state_dim), np.ones(state_dim))


@pytest.mark.parametrize("obs", ["image", "state"])
def test_shapes_over_batch_and_time(obs):
    wm, batch = make_wm(obs), make_batch()
    c = wm.cfg
    post = wm.rssm.observe(wm.embed(wm.target(batch)), batch["action"], batch["is_first"])
    assert post["feat"].shape == (B, T, c.deter + c.stoch) and post["post_std"].min() >= c.min_std
    recon = wm.decode(post["feat"])
    assert recon.shape == wm.target(batch).shape
    start = {"h": post["h"][:, -1], "z": post["z"][:, -1]}
    feats, acts = wm.rssm.imagine(start, 4, policy=lambda f: torch.zeros(f.shape[0], A))
    assert feats.shape == (B, 4, c.deter + c.stoch) and acts.shape == (B, 4, A)
    mean, std = wm.rssm.prior_stats(post["h"])
    assert mean.shape == (c.ensemble, B, T, c.stoch)


@pytest.mark.parametrize("obs", ["image", "state"])
def test_loss_terms_finite_scalar_and_weighted(obs):
    wm, batch = make_wm(obs), make_batch()
    torch.manual_seed(0)
    total, m, _ = wm.loss(batch)
    assert total.dim() == 0 and torch.isfinite(total)
    for key in ("wm/obs", "wm/reward", "wm/kl"):
        assert np.isfinite(m[key])
    assert np.isclose(total.item(), m["wm/obs"] + m["wm/reward"] + m["wm/kl"], rtol=1e-5)
    # A term with weight zero contributes nothing.
    wm0 = make_wm(obs, tiny_cfg(kl_scale=0.0, reward_scale=0.0))
    wm0.load_state_dict(wm.state_dict())
    torch.manual_seed(0)
    total0, m0, _ = wm0.loss(batch)
    assert np.isclose(total0.item(), m0["wm/obs"], rtol=1e-6)


def test_gradients_reach_every_parameter():
    wm, batch = make_wm("image"), make_batch()
    wm.loss(batch)[0].backward()
    missing = [n for n, p in wm.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_kl_balance_and_free_nats_change_only_the_kl():
    wm, batch = make_wm("image"), make_batch()
    torch.manual_seed(0)
    _, m, post = wm.loss(batch)
    plain, _ = wm.rssm.kl_loss(post, free=0.0, balance=None)
    balanced, _ = wm.rssm.kl_loss(post, free=0.0, balance=0.8)
    freed, _ = wm.rssm.kl_loss(post, free=1e6, balance=None)
    assert torch.isclose(plain, balanced)  # balancing moves gradients, not the value
    assert freed.item() == pytest.approx(1e6)


def test_is_first_resets_state():
    wm, batch = make_wm("image"), make_batch()
    embed = wm.embed(wm.target(batch))
    k = 3
    is_first = batch["is_first"].clone()
    is_first[:, k] = True
    with torch.no_grad():
        full = wm.rssm.observe(embed, batch["action"], is_first)
        fresh = wm.rssm.observe(embed[:, k:], batch["action"][:, k:], is_first[:, k:])
    torch.testing.assert_close(full["h"][:, k], fresh["h"][:, 0])
    torch.testing.assert_close(full["post_mean"][:, k], fresh["post_mean"][:, 0])
    assert not torch.allclose(full["h"][:, k - 1], full["h"][:, k])


def wm_run(tmp_path, dataset_dir, steps, stop=None, name="run", **wm):
    from torch.utils.tensorboard import SummaryWriter

    cfg = tiny_cfg(steps=steps, checkpoint_every=2, image_every=4, **wm)
    ds = OfflineDataset(dataset_dir)
    mean, std = state_normaliser(ds)
    torch.manual_seed(0)  # the same initial weights for every run
    model = WorldModel(cfg.wm, cfg.obs, ds.action_dim, ds.state_dim, mean, std)
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    writer = SummaryWriter(str(run))
    train_world_model(cfg, model, ds, run, writer, torch.device("cpu"), steps=stop)
    writer.close()
    return model, ds, run


def test_training_lowers_reconstruction_loss(tmp_path, tiny_dataset):
    model, ds, _ = wm_run(tmp_path, tiny_dataset, steps=0)
    batch = to_torch(ds.sample_sequences(8, 8, np.random.default_rng(1)), "cpu")
    torch.manual_seed(0)
    before = model.loss(batch)[1]["wm/obs"]
    model, _, _ = wm_run(tmp_path, tiny_dataset, steps=40, name="trained", lr=3e-3)
    torch.manual_seed(0)
    after = model.loss(batch)[1]["wm/obs"]
    assert after < 0.7 * before, (before, after)


def test_resume_is_exact(tmp_path, tiny_dataset):
    straight, _, _ = wm_run(tmp_path, tiny_dataset, steps=8, name="straight")
    wm_run(tmp_path, tiny_dataset, steps=8, stop=4, name="halves")
    resumed, _, _ = wm_run(tmp_path, tiny_dataset, steps=8, name="halves")
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def test_tensorboard_has_open_loop_images(tmp_path, tiny_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run = wm_run(tmp_path, tiny_dataset, steps=4)
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert {f"wm/open_loop/head{k}" for k in range(3)} <= set(acc.Tags()["images"])
    assert "wm/open_loop_mse_h1" in acc.Tags()["tensors"]  # scalars as 0-d tensors (report.scalar)
    assert "wm/kl" in acc.Tags()["tensors"]


def test_non_finite_loss_stops_with_step_and_term(tmp_path, tiny_dataset):
    from latent_combo.utils import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match=r"non-finite .*wm/.* at step 1"):
        wm_run(tmp_path, tiny_dataset, steps=4, obs_scale=float("inf"))
    assert not (tmp_path / "run" / "wm.pt").exists()  # nothing bad was checkpointed


def test_random_shift_moves_each_frame_by_at_most_pad():
    from latent_combo.world_model import random_shift

    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    torch.manual_seed(0)
    y = random_shift(x, 2)
    assert y.shape == x.shape
    for i in range(2):
        # Interior pixels equal the original at one offset in [-2, 2]^2, the same for every channel.
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i, :, 2:-2, 2:-2], x[i, :, 2 + dy:14 + dy, 2 + dx:14 + dx])]
        assert len(found) == 1


def test_metrics_read_on_log_steps_equal_an_eager_per_step_loop(tmp_path, tiny_dataset):
    """The loop keeps metrics as tensors and reads them on log steps only; the values it logs are those
    a loop reading `.item()` after every step sees."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from latent_combo.utils import autocast, seed_everything

    _, ds, run = wm_run(tmp_path, tiny_dataset, steps=4)
    acc = EventAccumulator(str(run))
    acc.Reload()
    from tensorboard.util import tensor_util

    logged = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("wm/obs")}
    assert sorted(logged) == [2, 4]

    cfg = tiny_cfg(steps=4)
    mean, std = state_normaliser(ds)
    torch.manual_seed(0)
    model = WorldModel(cfg.wm, cfg.obs, ds.action_dim, ds.state_dim, mean, std)
    opt = torch.optim.Adam(model.parameters(), cfg.wm.lr, eps=1e-5)
    sampler = np.random.default_rng(cfg.seed)
    seed_everything(cfg.seed)
    eager = {}
    for step in range(1, 5):
        batch = to_torch(ds.sample_sequences(cfg.wm.batch, cfg.wm.length, sampler,
                                             ("image", "action", "reward", "is_first")), "cpu")
        with autocast(torch.device("cpu"), cfg.precision):  # as the loop (bf16 where `auto` picks it)
            loss, metrics, _ = model.loss(batch)
        eager[step] = metrics["wm/obs"].item()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.wm.grad_clip)
        opt.step()
    for step, value in logged.items():
        assert value == pytest.approx(eager[step], rel=1e-6)


def test_inverse_dynamics_loss_is_on_and_off_by_its_weight():
    cfg = tiny_cfg()
    wm = make_wm("image", dataclasses.replace(cfg, wm=dataclasses.replace(cfg.wm, inverse_scale=1.0)))
    _, m, _ = wm.loss(make_batch())
    assert torch.isfinite(m["wm/inverse"]) and m["wm/inverse"] > 0
    assert "wm/inverse" not in make_wm("image").loss(make_batch())[1]
    assert not hasattr(make_wm("image"), "inverse")  # no head: checkpoints of other configs unchanged
