"""U-Net shapes, widths, residual blocks, norms, and the experiment -> model factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctseg.models import ConvBlock, UNet, build_model


@pytest.mark.parametrize(
    ("name", "shape"),
    [("unet2d", (2, 1, 32, 48)), ("unet3d", (1, 1, 16, 24, 32)), ("resunet3d", (1, 1, 16, 24, 32))],
)
def test_output_shape(name, shape):
    torch.manual_seed(0)
    net = build_model({"model": name, "base_width": 4}, 5)
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], 5, *shape[2:])


def test_seed003_widths_and_residual_blocks():
    net = build_model({"model": "resunet3d"}, 3)
    assert net.widths == [16, 32, 64, 128]
    assert all(b.residual for b in net.encoders) and all(b.residual for b in net.decoders)
    plain = build_model({"model": "unet3d"}, 3)
    assert not any(b.residual for b in plain.encoders)
    # residual blocks add exactly the 1x1 projections (conv + norm affine) where widths change
    extra = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in plain.parameters())
    proj = sum(
        p.numel()
        for b in [*net.encoders, *net.decoders]
        if b.skip is not None
        for p in b.skip.parameters()
    )
    assert extra == proj > 0


def test_residual_block_identity_path():
    """With zeroed convolutions and norm shift, a residual block with equal widths returns
    LeakyReLU(x): the skip connection carries the input through."""
    blk = ConvBlock(3, 4, 4, residual=True)
    for m in blk.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.zeros_(m.weight)
    x = torch.randn(1, 4, 4, 4, 4)
    assert torch.allclose(blk(x), nn.functional.leaky_relu(x, 0.01), atol=1e-6)


def test_depth_base_width_and_norm_options():
    net = build_model({"model": "unet2d", "base_channels": 8, "depth": 3, "norm": "batch"}, 2)
    assert net.widths == [8, 16, 32] and net.divisor == 4
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    inst = build_model({"model": "unet3d", "base_width": 4, "depth": 2}, 2)
    assert any(isinstance(m, nn.InstanceNorm3d) for m in inst.modules())


def test_invalid_options():
    with pytest.raises(ValueError):
        build_model({"model": "vnet"}, 2)
    with pytest.raises(ValueError):
        build_model({"model": "unet3d", "norm": "group"}, 2)
    with pytest.raises(ValueError):
        UNet(4, 1, 2)


def test_gradients_reach_the_first_layer():
    net = build_model({"model": "unet3d", "base_width": 4, "depth": 3}, 3)
    out = net(torch.randn(1, 1, 8, 8, 8))
    out.sum().backward()
    assert net.encoders[0].conv1.weight.grad.abs().sum() > 0
