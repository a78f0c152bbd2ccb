"""U-Net models: 2D, 3D and the residual 3D U-Net of seed 003.

One generic encoder-decoder (:class:`UNet`) covers all three: ``dim`` 2 or 3, ``depth``
resolution levels with ``base_width * 2**level`` channels (seed 003: 16-32-64-128 = base 16,
depth 4), plain double-conv blocks (Ronneberger et al.) or residual blocks (seed 003 added the
residual connection because its plain 4-level U-Net degraded), instance or batch norm
(instance norm is the default: it behaves with the batch sizes of 1-2 that 3D volumes allow on a
CPU). Downsampling by 2x2(x2) max-pooling, upsampling by transposed convolution, skip
connections by concatenation. Inputs need spatial sizes divisible by ``2**(depth-1)``.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("unet2d", "unet3d", "resunet3d")


def _norm(dim: int, norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        cls = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
        return cls(channels, affine=True)
    if norm == "batch":
        return (nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d)(channels)
    raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")


def _conv(dim: int) -> type[nn.Module]:
    return nn.Conv2d if dim == 2 else nn.Conv3d


class ConvBlock(nn.Module):
    """Two conv-norm-LeakyReLU layers; with ``residual`` the input (1x1-projected when the
    channel count changes) is added before the last activation."""

    def __init__(
        self, dim: int, c_in: int, c_out: int, norm: str = "instance", residual: bool = False
    ):
        super().__init__()
        conv = _conv(dim)
        self.conv1 = conv(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = _norm(dim, norm, c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(dim, norm, c_out)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.residual = residual
        self.skip = None
        if residual and c_in != c_out:
            self.skip = nn.Sequential(conv(c_in, c_out, 1, bias=False), _norm(dim, norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.residual:
            out = out + (x if self.skip is None else self.skip(x))
        return self.act(out)


class UNet(nn.Module):
    """Generic 2D/3D U-Net returning per-class logits of the input's spatial size."""

    def __init__(
        self,
        dim: int,
        in_channels: int,
        n_classes: int,
        base_width: int = 16,
        depth: int = 4,
        norm: str = "instance",
        residual: bool = False,
    ):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError("dim must be 2 or 3")
        if depth < 2:
            raise ValueError("depth must be >= 2")
        self.dim, self.depth = dim, depth
        widths = [base_width * 2**i for i in range(depth)]
        self.widths = widths
        self.encoders = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoders.append(ConvBlock(dim, c, w, norm, residual))
            c = w
        self.pool = nn.MaxPool2d(2) if dim == 2 else nn.MaxPool3d(2)
        up = nn.ConvTranspose2d if dim == 2 else nn.ConvTranspose3d
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_low, w in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            self.ups.append(up(w_low, w, 2, stride=2))
            self.decoders.append(ConvBlock(dim, 2 * w, w, norm, residual))
        self.head = _conv(dim)(widths[0], n_classes, 1)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.ups, self.decoders, skips[::-1], strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def UNet2D(in_channels: int = 1, n_classes: int = 2, **kw) -> UNet:  # noqa: N802 - class-like factory
    """2D U-Net (axial slices, DRRs)."""
    return UNet(2, in_channels, n_classes, **kw)


def UNet3D(in_channels: int = 1, n_classes: int = 2, **kw) -> UNet:  # noqa: N802
    """3D U-Net."""
    return UNet(3, in_channels, n_classes, **kw)


def ResUNet3D(in_channels: int = 1, n_classes: int = 2, **kw) -> UNet:  # noqa: N802
    """Residual 3D U-Net of seed 003 (defaults 16-32-64-128)."""
    return UNet(3, in_channels, n_classes, residual=True, **kw)


def model_kwargs(experiment: dict) -> dict:
    """The architecture keys of an experiment with their defaults (stored in model.pt)."""
    return {
        "model": experiment.get("model", "unet3d"),
        "base_width": int(experiment.get("base_width", experiment.get("base_channels", 16))),
        "depth": int(experiment.get("depth", 4)),
        "norm": experiment.get("norm", "instance"),
    }


def build_model(experiment: dict, n_classes: int) -> nn.Module:
    """Model named by ``experiment["model"]`` (unet2d | unet3d | resunet3d) with
    ``base_width`` (alias ``base_channels``; 16), ``depth`` (4) and ``norm`` (instance | batch) from the experiment."""
    kw = model_kwargs(experiment)
    name = kw.pop("model")
    if name not in MODELS:
        raise ValueError(f"experiment model must be one of {MODELS}, got {name!r}")
    factory = {"unet2d": UNet2D, "unet3d": UNet3D, "resunet3d": ResUNet3D}[name]
    return factory(1, n_classes, **kw)
