"""World-model options of issue 38 (layer-norm GRU, layer norm, KL split and free-nats mode, decoding a share of
the frames, bf16 on CPU): each trains with a finite loss, and with every option off the loss is today's."""

import numpy as np
import pytest
import torch
from test_world_model import make_batch, make_wm, tiny_cfg

# The debug-size loss, its terms and the gradient norm of one (B, T) = (3, 6) batch, computed on the code before
# the options existed (commit cf26c65): with every option at its default, they must not move.
REFERENCE = {"image": (525.3090209960938, 524.3131103515625, 0.4819360375404358, 307.9245910644531),
             "state": (2.8950939178466797, 2.073997735977173, 0.34486156702041626, 1.6571768522262573)}


def loss_and_grad(obs, cfg=None):
    torch.manual_seed(0)
    wm = make_wm(obs, cfg)
    batch = make_batch()
    torch.manual_seed(1)
    total, m, _ = wm.loss(batch)
    total.backward()
    grad = torch.sqrt(sum((p.grad ** 2).sum() for p in wm.parameters() if p.grad is not None))
    return wm, total, m, grad


@pytest.mark.parametrize("obs", ["image", "state"])
def test_options_off_leave_the_loss_as_before(obs):
    _, total, m, grad = loss_and_grad(obs)
    got = (total.item(), m["wm/obs"].item(), m["wm/kl"].item(), grad.item())
    np.testing.assert_allclose(got, REFERENCE[obs], rtol=1e-6)


def test_options_off_add_no_parameters():
    """A checkpoint saved before the options loads as it is: no norm modules, torch's GRU cell."""
    keys = make_wm("image").state_dict().keys()
    assert not [k for k in keys if "norm" in k] and "rssm.gru.weight_ih" in keys


OPTIONS = {"gru_norm": dict(gru_norm=True), "norm": dict(norm="layer"),
           "kl_split": dict(kl_dyn=0.5, kl_rep=0.1, kl_free=1.0),
           "kl_free_batch": dict(kl_free_mode="batch", kl_free=0.1, kl_balance=0.8),  # tiny model: KL < 1 nat
           "decode_share": dict(decode_share=0.5)}


@pytest.mark.parametrize("obs", ["image", "state"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_trains_a_step_with_a_finite_loss(obs, option):
    wm, total, m, grad = loss_and_grad(obs, tiny_cfg(**OPTIONS[option]))
    assert torch.isfinite(total) and torch.isfinite(grad) and all(torch.isfinite(v) for v in m.values())
    if obs == "image":
        missing = [n for n, p in wm.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, missing
    opt = torch.optim.Adam(wm.parameters(), 1e-3)
    opt.step()
    assert torch.isfinite(wm.loss(make_batch())[0])


def test_layer_norm_gru_gates():
    from latent_combo.nets import LayerNormGRUCell

    torch.manual_seed(0)
    cell = LayerNormGRUCell(5, 8)
    zero_x, zero_h = torch.zeros(4, 5), torch.zeros(4, 8)
    reset, cand, update = cell.gates(zero_x, zero_h)
    # A zero pre-activation: reset 1/2, candidate 0, update sigmoid(-1) = 0.269: the cell starts keeping h.
    torch.testing.assert_close(update, torch.full_like(update, 0.2689414), atol=1e-6, rtol=0)
    assert torch.equal(cand, torch.zeros_like(cand)) and torch.allclose(reset, torch.full_like(reset, 0.5))
    x, h = torch.randn(1000, 5), torch.randn(1000, 8)
    _, cand, update = cell.gates(x, h)
    torch.testing.assert_close(cell(x, h), update * cand + (1 - update) * h)
    assert 0.2 < update.mean() < 0.4 and cand.abs().max() <= 1  # unit-variance gates around the -1 bias
    pre = cell.norm(cell.linear(torch.cat([x, h], -1)))
    torch.testing.assert_close(pre.mean(-1), torch.zeros(1000), atol=1e-5, rtol=0)  # normalised over 3 x size


@pytest.mark.parametrize("norm", [False, True])
def test_decoder_matmul_first_layer_equals_the_transposed_conv(norm):
    """The decoder's first transposed conv, run as a matmul on its 1x1 input, and channels_last, with and without the
    channel norm: the same image as the plain layer-by-layer stack."""
    from torch.nn import functional as F

    from latent_combo.world_model import ConvDecoder

    torch.manual_seed(0)
    dec = ConvDecoder(12, depth=4, norm=norm).to(memory_format=torch.channels_last)
    if norm:  # a gain and shift away from 1 and 0, so the test sees them applied
        for n in dec.norms:
            torch.nn.init.normal_(n.weight, 1.0, 0.3)
            torch.nn.init.normal_(n.bias, 0.0, 0.3)
    feat = torch.randn(5, 12)
    x = dec.fc(feat).view(5, -1, 1, 1)
    for i, deconv in enumerate(dec.deconvs):
        x = deconv(x)
        if i < 3:
            x = F.elu(dec.norms[i](x) if norm else x)
    out = dec(feat)
    assert out.shape == (5, 3, 64, 64)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_channel_norm_normalises_each_pixel_over_channels():
    from latent_combo.world_model import ConvEncoder

    enc = ConvEncoder(depth=4, norm=True).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last) - 0.5
    y = enc.norms[0](enc.convs[0](x))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 31, 31), atol=1e-5, rtol=0)
    assert enc(x).shape == (2, enc.out_dim)


def post_and_rssm():
    torch.manual_seed(0)
    wm = make_wm("image")
    batch = make_batch()
    post = wm.rssm.observe(wm.embed(wm.target(batch)), batch["action"], batch["is_first"])
    return wm.rssm, post


def test_kl_split_value_is_the_kl_when_its_weights_sum_to_one():
    rssm, post = post_and_rssm()
    plain, per_head = rssm.kl_loss(post, free=0.0, balance=None)
    split, split_heads = rssm.kl_loss(post, free=0.0, balance=None, split=(0.8, 0.2))
    torch.testing.assert_close(split, plain)
    torch.testing.assert_close(split_heads, per_head)
    freed, _ = rssm.kl_loss(post, free=1e6, balance=None, split=(0.5, 0.1))
    assert freed.item() == pytest.approx(0.6e6)  # each term clipped at the free nats on its own


@pytest.mark.parametrize("split", [(1.0, 0.0), (0.0, 1.0)])
def test_kl_split_terms_train_only_the_prior_or_only_the_posterior(split):
    """dyn moves the prior towards the posterior, rep the posterior towards the prior. (Both reach h, and so every
    earlier step: only the distributions' own outputs tell them apart.)"""
    rssm, post = post_and_rssm()
    for k in ("post_mean", "post_std"):
        post[k].retain_grad()
    rssm.kl_loss(post, free=0.0, balance=None, split=split)[0].backward()
    prior_grad = rssm.prior_out.weight.grad
    prior_grad = 0.0 if prior_grad is None else prior_grad.abs().sum().item()
    post_grad = sum(post[k].grad.abs().sum().item() for k in ("post_mean", "post_std"))
    dyn_only = split[0] > 0
    assert (prior_grad > 0) == dyn_only and (post_grad > 0) != dyn_only, (prior_grad, post_grad)


def test_free_nats_per_step_and_on_the_batch_mean():
    from latent_combo.rssm import free_nats

    kl = torch.tensor([[[0.3, 1.5]]], requires_grad=True)  # (K, B, T) = (1, 1, 2)
    step = free_nats(kl, 1.0, "step")
    assert step.item() == pytest.approx(1.25)  # (max(0.3, 1) + 1.5) / 2
    step.backward()
    assert kl.grad.tolist() == [[[0.0, 0.5]]]  # the step under the free nats gets no gradient
    kl.grad = None
    batch = free_nats(kl, 1.0, "batch")
    assert batch.item() == pytest.approx(1.0)  # the mean, 0.9, is below the free nat
    batch.backward()
    assert kl.grad.abs().sum() == 0
    kl2 = torch.tensor([[[0.5, 2.5]]], requires_grad=True)
    free_nats(kl2, 1.0, "batch").backward()
    assert kl2.grad.tolist() == [[[0.5, 0.5]]]  # a mean above it: both steps trained
    assert free_nats(kl2, 0.0, "batch").item() == free_nats(kl2, 0.0, "step").item() == pytest.approx(1.5)


@pytest.mark.parametrize("override,match", [({"wm.kl_dyn": 0.5}, "set both"), ({"wm.norm": "batch"}, "wm.norm"),
                                            ({"wm.kl_free_mode": "mean"}, "kl_free_mode"),
                                            ({"wm.decode_share": 0.0}, "decode_share")])
def test_option_values_are_checked(override, match):
    from latent_combo.config import resolve

    with pytest.raises(ValueError, match=match):
        resolve("debug", overrides=override)


@pytest.mark.parametrize("obs", ["image", "state"])
def test_decoding_a_share_of_the_frames_estimates_the_full_image_loss(obs):
    torch.manual_seed(0)
    wm, batch = make_wm(obs), make_batch()
    with torch.no_grad():
        target = wm.target(batch)
        feat = wm.rssm.observe(wm.embed(target), batch["action"], batch["is_first"])["feat"]
        recon = wm.decode(feat)
        full = 0.5 * ((recon - target) ** 2).flatten(2).sum(-1).mean()  # the loss as written before the option
        rng_before = torch.get_rng_state()
        assert wm.obs_loss(feat, target, 1.0).item() == full.item()
        assert torch.equal(torch.get_rng_state(), rng_before)  # share 1 draws nothing: training streams unchanged
        halves = torch.stack([wm.obs_loss(feat, target, 0.5) for _ in range(400)])
    per_frame = 0.5 * ((recon - target) ** 2).flatten(2).sum(-1).flatten()  # 18 frames, 9 drawn each time
    assert not torch.allclose(halves, halves[0])  # a different half each draw
    # Unbiased: the mean over draws is within 4 standard errors of the full loss.
    se = per_frame.std(correction=0) * ((18 - 9) / (18 - 1) / 9) ** 0.5 / 400 ** 0.5  # without replacement
    assert abs(halves.mean() - full) < 4 * se, (halves.mean(), full, se)


@pytest.mark.parametrize("option", ["off", "all"])
def test_bf16_autocast_runs_a_world_model_update_on_cpu(tmp_path, tiny_dataset, option):
    """precision=bf16 on CPU (not the default there): the training loop's updates run, the losses are finite and the
    KL is taken in fp32."""
    import dataclasses

    from latent_combo.utils import autocast

    opts = {} if option == "off" else {k: v for o in OPTIONS.values() for k, v in o.items()}
    cfg = tiny_cfg(**opts)
    torch.manual_seed(0)
    wm = make_wm("image", cfg)
    with autocast(torch.device("cpu"), "bf16"):
        total, m, _ = wm.loss(make_batch())
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in m.values()) and m["wm/kl"].dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in wm.parameters() if p.grad is not None)

    from torch.utils.tensorboard import SummaryWriter

    from latent_combo.data import OfflineDataset
    from latent_combo.runs import load_checkpoint
    from latent_combo.world_model_training import build_world_model, train_world_model

    cfg = dataclasses.replace(tiny_cfg(steps=2, **opts), precision="bf16")
    ds = OfflineDataset(tiny_dataset)
    model = build_world_model(cfg, ds, torch.device("cpu"))
    writer = SummaryWriter(str(tmp_path))
    train_world_model(cfg, model, ds, tmp_path, writer, torch.device("cpu"))
    writer.close()
    ckpt = load_checkpoint(tmp_path / "wm.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["precision"] == "bf16"
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
