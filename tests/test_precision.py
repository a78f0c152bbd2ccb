"""The shared mixed-precision policy and the guarded optimiser step (ctseg.training.precision)."""

from __future__ import annotations

import pytest
import torch

from ctseg.core.errors import ConfigError
from ctseg.training.precision import (
    bf16_safe_depth,
    cpu_has_bf16,
    guarded_step,
    mixed_precision,
    require_bf16_safe_depth,
    to_channels_last,
)


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def test_a_non_finite_loss_changes_neither_weights_nor_optimiser_state():
    model, opt = _model_and_opt()
    x = torch.randn(3, 4)
    assert guarded_step(model, opt, model(x).sum())  # one real step: AdamW has moments
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    ok = guarded_step(model, opt, model(x).sum() * float("nan"))
    assert not ok
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(
        torch.equal(a, s["exp_avg"]) for a, s in zip(moments, opt.state.values(), strict=True)
    )
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step


def test_a_finite_step_moves_the_weights_downhill_and_clips():
    model, opt = _model_and_opt()
    x = torch.randn(3, 4)
    loss0 = float((model(x) ** 2).sum())
    assert guarded_step(model, opt, (model(x) ** 2).sum())
    assert float((model(x) ** 2).sum()) < loss0
    # an enormous gradient is clipped to the norm before AdamW sees it: the step stays finite
    model2, opt2 = _model_and_opt()
    assert guarded_step(model2, opt2, model2(x).sum() * 1e15, max_norm=1.0)
    assert all(torch.isfinite(p).all() for p in model2.parameters())


def test_cpu_autocast_is_off_unless_asked():
    ctx = mixed_precision(torch.device("cpu"))
    conv = torch.nn.Conv3d(1, 2, 3)
    with ctx():
        assert conv(torch.randn(1, 1, 5, 5, 5)).dtype == torch.float32


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_cpu_bf16_autocast_runs_convolutions_in_bf16():
    conv = torch.nn.Conv3d(1, 2, 3)
    with mixed_precision(torch.device("cpu"), cpu_bf16=True)():
        out = conv(torch.randn(1, 1, 5, 5, 5))
    assert out.dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32  # weights stay float32


def test_channels_last_changes_the_layout_not_the_values():
    x = torch.randn(2, 3, 4, 5, 6)
    y = to_channels_last(x)
    assert torch.equal(x, y)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert not x.is_contiguous(memory_format=torch.channels_last_3d)
    assert to_channels_last(torch.randn(2, 3, 4, 5)).is_contiguous(
        memory_format=torch.channels_last
    )
    conv3, conv2 = torch.nn.Conv3d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    w3, w2 = conv3.weight.detach().clone(), conv2.weight.detach().clone()
    assert to_channels_last(conv3, 3) is conv3 and to_channels_last(conv2, 2) is conv2
    assert conv3.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv3.weight, w3) and torch.equal(conv2.weight, w2)
    # the same convolution either way, up to the order of the sums
    assert torch.allclose(conv3(y), conv3(x.contiguous()), atol=1e-5)
    with pytest.raises(ValueError, match="4-D or 5-D"):
        to_channels_last(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="spatial_dims"):
        to_channels_last(conv3)


def _levels(depth: int, divisor: int) -> list[int]:
    return [depth // 2**k for k in range(divisor.bit_length())]


@pytest.mark.parametrize("divisor", [1, 2, 4, 8, 16])
def test_bf16_safe_depth_is_the_smallest_multiple_with_no_level_two_deep(divisor):
    for depth in range(1, 100):
        out = bf16_safe_depth(depth, divisor)
        assert out >= depth and out % divisor == 0
        assert 2 not in _levels(out, divisor), (depth, divisor, out)
        smaller = range(-(-depth // divisor) * divisor, out, divisor)
        assert all(2 in _levels(d, divisor) for d in smaller), (depth, divisor, out)
    assert bf16_safe_depth(16, 8) == 24  # the first stage's 120 mm crop at 8 mm: 16 -> 2 deep
    assert bf16_safe_depth(40, 8) == 40


def _first_stage_grads(depth: int, heap_fill: float) -> list[torch.Tensor]:
    """Weight gradients of the first stage's U-Net (8-16-32-64, 4 levels) in bf16 +
    channels-last, after the heap held ``heap_fill``."""
    from ctseg.localisation.training import resolve_config
    from ctseg.models import build_model

    for n in (1 << 16, 1 << 18, 1 << 20, 1 << 22):  # leave freed buffers full of heap_fill
        buf = torch.full((n,), heap_fill)
        del buf
    torch.manual_seed(0)
    model = to_channels_last(build_model(resolve_config({}), 2), 3)
    g = torch.Generator().manual_seed(1)
    x = to_channels_last(torch.randn((1, 1, depth, 40, 48), generator=g))
    with mixed_precision(torch.device("cpu"), cpu_bf16=True)():
        out = model(x)
    (out.float() * torch.randn(out.shape, generator=g)).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_weight_gradients_at_a_safe_depth_do_not_depend_on_the_heap():
    """At a 16-voxel-deep input the bottom level is 2 deep and oneDNN's bf16 weight gradient
    there changes with what the heap held (measured: non-finite after NaN); padded to
    bf16_safe_depth it is the same after zeros, NaN or 1e30."""
    depth = bf16_safe_depth(16, 8)
    ref = _first_stage_grads(depth, 0.0)
    assert all(torch.isfinite(g).all() for g in ref)
    for fill in (float("nan"), 1e30):
        grads = _first_stage_grads(depth, fill)
        assert all(torch.equal(a, b) for a, b in zip(ref, grads, strict=True)), fill


def test_a_fixed_patch_two_voxels_deep_at_some_level_is_refused_with_the_fix():
    require_bf16_safe_depth(32, 8, "vert3d")  # 32, 16, 8, 4: no level 2 deep
    with pytest.raises(ConfigError, match="regions: a training patch 16 voxels deep.*make it 24"):
        require_bf16_safe_depth(16, 8, "regions")
