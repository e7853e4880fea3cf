"""ResNet view/sketch backbones (He et al. 2016) in Flax Linen.

GroupNorm is the default: its statistics are per example, so a step gives the same result on
1 device or 8, and no batch statistics need syncing. BatchNorm is available with `axis_name`
so statistics are averaged over the data-parallel axis. `dtype` sets the compute precision
(bf16 on GPU/TPU); parameters stay float32 and features are returned as float32.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sb3dr_jax.models.norm import GroupNorm

PRESETS: dict[str, dict[str, Any]] = {
    "resnet_tiny": dict(stage_sizes=(1, 1, 1, 1), block="basic", num_filters=16),
    "resnet_small": dict(stage_sizes=(1, 1, 1, 1), block="basic", num_filters=32),
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic", num_filters=64),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic", num_filters=64),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck", num_filters=64),
}


# "group": our GroupNorm (models/norm.py, a hand-written backward that XLA:CPU runs fast);
# "group_flax": Flax's own (autodiff backward), the same maths and parameters.
NORMS = ("group", "group_flax", "batch")
# The ImageNet stem's 7x7/2 convolution ("conv"), or the same convolution on a space-to-depth
# input ("s2d": `S2DStem`); its max-pool as XLA's reduce_window ("window") or as the max of 9
# strided slices ("slices": `max_pool_3x3_s2`). Same maths and parameters either way.
STEMS = ("conv", "s2d")
POOLS = ("window", "slices")
BLOCKS = ("basic", "bottleneck")
CONV_IMPLS = ("xla", "onednn", "auto")


def resolve_conv_impl(impl: str) -> str:
    """ "auto" -> "onednn" on a CPU backend with the kernels built, else "xla".

    Args:
      impl: "xla", "onednn" or "auto" (config `model.conv_impl`).

    Returns:
      "xla" or "onednn".

    Raises:
      ValueError: an unknown name, or "onednn" where the kernels cannot run (the reason named).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl: unknown {impl!r}; choose from {CONV_IMPLS}")
    if impl == "xla":
        return impl
    from sb3dr_jax.kernels import onednn  # builds the kernels on first use

    cpu = jax.default_backend() == "cpu"
    if cpu and onednn.available():
        return "onednn"
    why = onednn.unavailable_reason() if cpu else "the backend is not CPU"
    if impl == "onednn":
        raise ValueError(f"model.conv_impl='onednn' cannot run here: {why}")
    if cpu:
        _warn_once(
            f"model.conv_impl='auto': XLA's convolutions, since oneDNN's are unavailable ({why})"
        )
    return "xla"


@functools.cache
def conv_module(impl: str) -> Any:
    """The convolution module a `ResNet` is built with, for `model.conv_impl`: the one place
    where the CPU kernels are chosen.

    Args:
      impl: "xla", "onednn" or "auto" (resolved with `resolve_conv_impl`).

    Returns:
      `nn.Conv` (XLA's convolutions), or `nn.Conv` computing through oneDNN's custom calls
      (kernels/onednn.py). Cached: one object per choice, so equal configs build equal modules.

    Raises:
      ValueError: as `resolve_conv_impl`.
    """
    if resolve_conv_impl(impl) == "onednn":
        from sb3dr_jax.kernels import onednn

        return functools.partial(nn.Conv, conv_general_dilated=onednn.conv_general_dilated)
    return nn.Conv


@functools.cache
def _warn_once(msg: str) -> None:
    logging.warning(msg)


def num_groups(channels: int, groups: int) -> int:
    """The largest group count <= `groups` dividing `channels` (GroupNorm needs a divisor).

    Equals `groups` for every preset width; narrower test widths (e.g. 4 or 12 channels) fall
    back to a divisor instead of failing.
    """
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def _norm(
    kind: str,
    train: bool,
    dtype,
    axis_name: str | None,
    groups: int,
    channels: int,
    zero_init: bool = False,
) -> nn.Module:
    """A fresh normalisation layer for `channels` features (zero_init: last norm of a block)."""
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    if kind == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            # Averaging statistics over the device axis makes BatchNorm see the global batch.
            axis_name=axis_name if train else None,
            scale_init=scale_init,
        )
    if kind == "group_flax":
        return nn.GroupNorm(
            num_groups=num_groups(channels, groups), epsilon=1e-6, dtype=dtype,
            scale_init=scale_init,
        )  # fmt: skip
    # Our GroupNorm: Flax's maths and parameter names, with a backward pass XLA:CPU runs ~3-7x
    # faster (models/norm.py).
    return GroupNorm(num_groups=num_groups(channels, groups), dtype=dtype, scale_init=scale_init)


class S2DStem(nn.Module):
    """The stem's 7x7 stride-2 convolution (padding 3, no bias) computed as a 4x4 stride-1
    convolution of the 2x2 space-to-depth input: the same output and the same `kernel`
    parameter [7, 7, C, F] (so checkpoints are interchangeable with `nn.Conv`'s).

    Why: with C = 3 (or 1 for sketches) input channels cuDNN pads C to 8 and runs a slow
    pre-Hopper kernel: on an H200 the stem's forward took 2 ms of a 26 ms teacher step per
    branch (`benchmarks/README.md`). The space-to-depth input has 4C channels and a stride-1
    window, which the tensor-core kernels handle well.

    Attributes:
      features: F.
      dtype: compute dtype.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[N, H, W, C] (H, W even) -> [N, H/2, W/2, F]."""
        n, h, w, c = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"model.stem='s2d': needs even image sides, got {h}x{w}")
        f = self.features
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (7, 7, c, f), jnp.float32)
        # [7, 7] taps -> [8, 8] (a zero row and column) -> [4, 4] taps over 2x2 blocks:
        # block (a, b) of tap (i, j) is the original tap (2i + a, 2j + b).
        k = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
        k = k.reshape(4, 2, 4, 2, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, f)
        x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))  # the 7x7 conv's padding
        hp, wp = h + 6, w + 6
        x = x.reshape(n, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, hp // 2, wp // 2, 4 * c)  # channel (a, b, c) = pixel (2y + a, 2x + b)
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), k.astype(self.dtype), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
    """`nn.max_pool(x, (3, 3), (2, 2), padding="SAME")` as the max of 9 strided slices.

    The same output; the gradient goes to the window's maximum as with `reduce_window` (only
    exact ties are split differently; after a ReLU, ties at 0 get no gradient either way).
    Why: XLA:GPU lowers reduce_window's gradient (select-and-scatter) to a scatter, 1.6 ms of
    a 26 ms teacher step on an H200; the slices' gradient is elementwise and fuses.

    Args:
      x: [N, H, W, C].

    Returns:
      [N, ceil(H/2), ceil(W/2), C].
    """
    n, h, w, c = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    ph, pw = max(2 * (oh - 1) + 3 - h, 0), max(2 * (ow - 1) + 3 - w, 0)  # SAME padding
    pad = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    out = None
    for dy in range(3):
        for dx in range(3):
            s = jax.lax.slice(
                xp, (0, dy, dx, 0), (n, dy + 2 * (oh - 1) + 1, dx + 2 * (ow - 1) + 1, c),
                (1, 2, 2, 1),
            )  # fmt: skip
            out = s if out is None else jnp.maximum(out, s)
    return out


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    filters: int
    strides: int
    norm: Any
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x):
        r = x
        y = self.conv(self.filters, (3, 3), self.strides, use_bias=False, dtype=x.dtype)(x)
        y = nn.relu(self.norm(self.filters)(y))
        y = self.conv(self.filters, (3, 3), use_bias=False, dtype=x.dtype)(y)
        y = self.norm(self.filters, zero_init=True)(y)  # block starts as the identity
        if r.shape != y.shape:
            r = self.conv(self.filters, (1, 1), self.strides, use_bias=False, dtype=x.dtype)(r)
            r = self.norm(self.filters)(r)
        return nn.relu(r + y)


class BottleneckBlock(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with a residual connection (ResNet-50 and up)."""

    filters: int
    strides: int
    norm: Any
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x):
        r = x
        f = self.filters
        y = nn.relu(self.norm(f)(self.conv(f, (1, 1), use_bias=False, dtype=x.dtype)(x)))
        y = self.conv(f, (3, 3), self.strides, use_bias=False, dtype=x.dtype)(y)
        y = nn.relu(self.norm(f)(y))
        y = self.conv(f * 4, (1, 1), use_bias=False, dtype=x.dtype)(y)
        y = self.norm(f * 4, zero_init=True)(y)  # block starts as the identity
        if r.shape != y.shape:
            r = self.conv(f * 4, (1, 1), self.strides, use_bias=False, dtype=x.dtype)(r)
            r = self.norm(f * 4)(r)
        return nn.relu(r + y)


class ResNet(nn.Module):
    """ResNet backbone: images [N, H, W, C] (float in [0, 1]) -> pooled features [N, F]."""

    stage_sizes: Sequence[int] = (1, 1, 1, 1)
    block: str = "basic"
    num_filters: int = 16
    norm: str = "group"
    groups: int = 8
    dtype: Any = jnp.float32
    axis_name: str | None = None
    # The convolution module (as flax's ResNet takes `conv`): `nn.Conv`, or the one
    # `conv_module(model.conv_impl)` picks (oneDNN's kernels on CPU; kernels/onednn.py).
    conv: Any = nn.Conv
    stem: str = "conv"  # STEMS: how the 7x7 stem (96 px and up) is computed
    pool: str = "window"  # POOLS: how its max-pool is computed

    def __post_init__(self):
        # Fail at construction, naming the config field, rather than deep inside tracing.
        if self.norm not in NORMS:
            raise ValueError(f"model.norm: unknown {self.norm!r}; choose from {NORMS}")
        if self.block not in BLOCKS:
            raise ValueError(f"model.block: unknown {self.block!r}; choose from {BLOCKS}")
        if self.stem not in STEMS:
            raise ValueError(f"model.stem: unknown {self.stem!r}; choose from {STEMS}")
        if self.pool not in POOLS:
            raise ValueError(f"model.pool: unknown {self.pool!r}; choose from {POOLS}")
        if self.num_filters < 1 or self.groups < 1 or not self.stage_sizes:
            raise ValueError(
                f"model: num_filters={self.num_filters}, groups={self.groups} and "
                f"stage_sizes={tuple(self.stage_sizes)} must be positive / non-empty"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        """Encodes images.

        Args:
          x: [N, H, W, C] images, floats in [0, 1] (see `models.common.normalize_uint8`).
          train: BatchNorm uses batch statistics (and updates `batch_stats`) when True.

        Returns:
          [N, F] float32 globally average-pooled features (F = `feature_dim`).
        """
        if x.ndim != 4:
            raise ValueError(f"ResNet input: expected [N, H, W, C], got shape {x.shape}")
        x = x.astype(self.dtype)
        norm = functools.partial(_norm, self.norm, train, self.dtype, self.axis_name, self.groups)
        conv = self.conv
        # ImageNet stem (7x7/2 + max-pool) from 96 px up; a strided 3x3 stem at 48-95 px (the
        # CPU configs' 64 px views); full resolution below, where every pixel matters.
        if x.shape[1] >= 96:
            if self.stem == "s2d":
                x = S2DStem(self.num_filters, self.dtype, name="stem")(x)
            else:
                x = conv(
                    self.num_filters,
                    (7, 7),
                    2,
                    padding=[(3, 3), (3, 3)],
                    use_bias=False,
                    dtype=self.dtype,
                    name="stem",
                )(x)
            x = nn.relu(norm(self.num_filters)(x))
            if self.pool == "slices":
                x = max_pool_3x3_s2(x)
            else:
                x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        else:
            stride = 2 if x.shape[1] >= 48 else 1
            x = conv(
                self.num_filters, (3, 3), stride, use_bias=False, dtype=self.dtype, name="stem"
            )(x)
            x = nn.relu(norm(self.num_filters)(x))
        block = BasicBlock if self.block == "basic" else BottleneckBlock
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                x = block(self.num_filters * 2**i, 2 if i > 0 and j == 0 else 1, norm, conv)(x)
        # Pool in f32: a mean over many bf16 activations loses precision.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    @property
    def feature_dim(self) -> int:
        """F, the size of the pooled feature."""
        mult = 4 if self.block == "bottleneck" else 1
        return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * mult


def resnet(preset: str = "resnet_tiny", **overrides) -> ResNet:
    """Builds a backbone from a preset name.

    Args:
      preset: one of `PRESETS`.
      **overrides: ResNet fields (num_filters, norm, dtype, axis_name, ...).

    Returns:
      The ResNet module.
    """
    if preset not in PRESETS:
        raise ValueError(f"model.backbone: unknown {preset!r}; choose from {sorted(PRESETS)}")
    return ResNet(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
