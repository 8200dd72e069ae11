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


OPTIONS = {"gru_norm": dict(gru_norm=True), "norm": dict(norm="layer")}


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
