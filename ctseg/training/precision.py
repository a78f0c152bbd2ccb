"""How a training step runs: mixed precision, memory layout, and the guarded optimiser step.

Why here: the segmentation trainer, the localiser's first stage and its patch networks
(refiner, regions) all run a forward pass under the same autocast and layout policy, and the
localiser's loops must survive the rare non-finite step that bf16 produces (one default run
diverged to NaN at step 400 before the guard existed).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ctseg.core.errors import ConfigError


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 / AMX via oneDNN)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mixed_precision(device: torch.device, cpu_bf16: bool = False):
    """Autocast context factory for a forward pass: bf16 on CUDA; bf16 on a CPU with native
    bf16 when ``cpu_bf16`` asks for it (measured 3.7x faster localiser steps on this project's
    CPU machine); else none. Weights, optimiser state and losses stay float32 (callers cast
    logits up before the loss)."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if bf16_on_cpu(device, cpu_bf16):
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


def bf16_safe_depth(depth: int, divisor: int) -> int:
    """The smallest depth >= ``depth`` that is a multiple of ``divisor`` and gives no U-Net
    level a depth of 2 voxels (a network with ``divisor`` = 2^poolings halves it at each level).

    Why: oneDNN's bf16 3-D convolution on a CPU computes its weight gradient from uninitialised
    memory when the input is 2 voxels deep (measured with torch 2.13 on an AVX512-BF16 CPU: the
    gradient changed with what the heap held before, and was non-finite when it held NaN;
    float32, and depths 1, 3, 4 and more, were exact; height or width 2 too). The localiser's
    first stage sees whole fields of view 9-16 voxels deep at 8 mm (a 120 mm crop, a neck):
    its bottom level was 2 deep, so its training steps were skipped or took a wrong gradient at
    random and two runs of the same recipe on the same machine parted after about 50 steps
    (``tests/test_precision.py``)."""
    out = max(divisor, -(-depth // divisor) * divisor)
    while any(out // 2**k == 2 for k in range(divisor.bit_length()) if 2**k <= divisor):
        out += divisor
    return out


def bf16_on_cpu(device: torch.device, cpu_bf16: bool) -> bool:
    """Whether :func:`mixed_precision` runs convolutions in bf16 on a CPU (oneDNN)."""
    return device.type == "cpu" and bool(cpu_bf16) and cpu_has_bf16()


def require_bf16_safe_depth(depth: int, divisor: int, what: str) -> None:
    """ConfigError naming ``what`` when a fixed training patch ``depth`` voxels deep would give a
    U-Net level of 2 voxels in CPU bf16 (:func:`bf16_safe_depth`): its weight gradient would
    come from uninitialised memory, silently."""
    safe = bf16_safe_depth(depth, divisor)
    if safe != depth:
        raise ConfigError(
            f"{what}: a training patch {depth} voxels deep (z) puts a U-Net level at 2 voxels, "
            f"where oneDNN's bf16 weight gradient is computed from uninitialised memory "
            f"(README, Centroid-only training); make it {safe} deep or set cpu_bf16: false"
        )


def to_channels_last(x: torch.Tensor | torch.nn.Module, spatial_dims: int | None = None):
    """``x`` in the channels-last layout (NHWC for 2-D, NDHWC for 3-D), same values.

    A batch ``[B, C, *spatial]`` is made contiguous in that layout; a module has its conv
    weights converted (``spatial_dims`` 2 or 3 says which layout), in place, and is returned.
    Why: oneDNN's bf16 convolutions on a CPU run faster on channels-last tensors than on
    NCHW ones, which it reorders on every call (``benchmarks/bench_train_step.py``,
    ``bench_localiser_step.py``: the vert3d step 0.77 of bf16's, the refiner's 0.72, on
    this project's AVX512-BF16 machine; no difference on the CPU of an earlier measurement;
    slower for some 2-D networks). The values, and so the training, are the same up to the
    order of floating-point sums."""
    if isinstance(x, torch.nn.Module):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3 for a module, got {spatial_dims!r}")
        fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        return x.to(memory_format=fmt)
    if x.ndim not in (4, 5):
        raise ValueError(f"a channels-last batch is 4-D or 5-D, got shape {tuple(x.shape)}")
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt)


def guarded_step(model: torch.nn.Module, opt, loss: torch.Tensor, max_norm: float = 12.0) -> bool:
    """Backward, clip the gradient norm, and step only when the loss and the norm are finite,
    so that one non-finite step cannot poison the weights or AdamW's moments. Gradients are
    cleared either way. Returns whether the step was taken."""
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    ok = bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return ok


__all__ = [
    "bf16_on_cpu",
    "bf16_safe_depth",
    "cpu_has_bf16",
    "guarded_step",
    "mixed_precision",
    "require_bf16_safe_depth",
]
