"""Does this CPU's bf16 3-D convolution compute its weight gradient from uninitialised memory?

On this project's machine (torch 2.13, oneDNN, AMD EPYC with AVX512-BF16) it does, for inputs
exactly 2 voxels deep: the gradient changes with what the heap held before the call and is
non-finite when the heap held NaN. That made two runs of the localiser's first stage part after
about 50 steps, and is why its batches are padded with ``bf16_safe_depth`` (README,
*Centroid-only training*). This prints, per input shape (depth, height, width), whether the
weight and input gradients of one bf16 ``Conv3d`` are the same after the heap held zeros, NaN
and 1e30, with float32 as the peer measured in the same run.

    .venv/bin/python benchmarks/bench_bf16_depth.py
"""

from __future__ import annotations

import torch

from ctseg.training.precision import cpu_has_bf16

SHAPES = [(1, 5, 7), (2, 5, 7), (2, 10, 14), (3, 5, 7), (4, 10, 14), (5, 2, 7), (5, 7, 2)]


def grads(shape, dtype, heap_fill: float, channels: int = 64):
    for n in (1 << 16, 1 << 18, 1 << 20, 1 << 22):  # leave freed buffers full of heap_fill
        buf = torch.full((n,), heap_fill)
        del buf
    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
    x = torch.randn((1, channels, *shape), generator=g).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        y = conv(x)
    (y.float() * torch.randn(y.shape, generator=g)).sum().backward()
    return conv.weight.grad.clone(), x.grad.clone()


def main() -> None:
    torch.set_num_threads(1)
    dtypes = ["float32"] + (["bf16"] if cpu_has_bf16() else [])
    if len(dtypes) == 1:
        print("this CPU has no native bf16: only float32 is measured")
    print(
        f"{'shape (d, h, w)':<16} {'precision':<9} {'weight grad same':<17} {'input grad same':<16} finite"
    )
    for shape in SHAPES:
        for dtype in dtypes:
            runs = [grads(shape, dtype, fill) for fill in (0.0, float("nan"), 1e30)]
            w_same = all(torch.equal(runs[0][0], r[0]) for r in runs[1:])
            x_same = all(torch.equal(runs[0][1], r[1]) for r in runs[1:])
            finite = all(bool(torch.isfinite(r[0]).all()) for r in runs)
            print(f"{str(shape):<16} {dtype:<9} {str(w_same):<17} {str(x_same):<16} {finite}")


if __name__ == "__main__":
    main()
