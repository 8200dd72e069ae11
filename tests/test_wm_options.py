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
