"""The two-encoder model the joint baselines train: a sketch encoder and a multi-view shape
encoder mapping into one unit-normalised embedding space."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sb3dr_jax.models import MLP, MultiViewEncoder, SketchEncoder, backbone
from sb3dr_jax.models.common import l2_normalize
from sb3dr_jax.objectives.baselines import lwbr_descriptor

POOLINGS = ("max", "mean", "lwbr")


class JointModel(nn.Module):
    """Sketch encoder + shape encoder (separate backbones), both -> unit [B, E].

    Attributes:
      sketch: a `SketchEncoder` (its head maps to `embed_dim`).
      shape: a `MultiViewEncoder` (pooled backbone features [B, F]).
      embed_dim: E.
      hidden: width of the shape head's MLP (0: a linear head).
      pooling: "max" / "mean" (done by the shape encoder) or "lwbr": the entropic Wasserstein
        barycentre of the softmax-normalised view features (Sinkhorn, `lwbr_iters` iterations).
    """

    sketch: nn.Module
    shape: nn.Module
    embed_dim: int
    hidden: int = 256
    pooling: str = "max"
    lwbr_eps: float = 0.05
    lwbr_iters: int = 20

    def setup(self):
        if self.hidden:
            self.shape_head = MLP(self.hidden, self.embed_dim)
        else:
            self.shape_head = nn.Dense(self.embed_dim)

    def __call__(self, images: jnp.ndarray, train: bool = True):
        """Sketches [B, S, S, 1] -> (unit embeddings [B, E], aux)."""
        s, aux = self.sketch(images, train=train)
        return l2_normalize(s.astype(jnp.float32)), aux

    def embed_shape(self, views: jnp.ndarray, train: bool = True):
        """Views [B, V, H, W, C] -> (unit embeddings [B, E], aux with `view_features`)."""
        f, aux = self.shape(views, train=train)  # [B, F], view_features [B, V, F]
        if self.pooling == "lwbr":
            vf = aux["view_features"].astype(jnp.float32)
            # The barycentre is a histogram over the F feature bins (sums to 1); times F puts
            # its entries near 1, the scale the head's init expects.
            f = lwbr_descriptor(vf, self.lwbr_eps, self.lwbr_iters) * vf.shape[-1]
        f = f.astype(jnp.float32)
        z = self.shape_head(f, train=train) if self.hidden else self.shape_head(f)
        return l2_normalize(z), aux

    def init_all(self, images: jnp.ndarray, views: jnp.ndarray):
        """Touches both encoders (for `init`)."""
        return self(images, train=False), self.embed_shape(views, train=False)


def joint_model(model_cfg, pooling: str) -> JointModel:
    """The joint model from the config's `model` block.

    Args:
      model_cfg: `backbone`, `num_filters`, `norm`, `dtype`, `conv_impl`, `stage_sizes`, ...,
        `hidden`, `embed_dim`, `chunk` (sketches per backbone call), `view_chunk` (views per
        call), `lwbr_iters`.
      pooling: one of `POOLINGS` (the method's).

    Returns:
      The module: two backbones of the same architecture, separate weights.

    Raises:
      ValueError: unknown pooling, dtype or backbone (naming the field).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"method pooling: unknown {pooling!r}; choose from {POOLINGS}")
    m = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    e, hidden = int(m["embed_dim"]), int(m.get("hidden", 256))
    sketch = SketchEncoder(backbone(m), embed_dim=e, hidden=hidden, chunk=int(m.get("chunk", 0)))
    shape = MultiViewEncoder(
        backbone(m),
        "max" if pooling == "lwbr" else pooling,
        int(m.get("view_chunk", 0)),
    )
    return JointModel(
        sketch,
        shape,
        embed_dim=e,
        hidden=hidden,
        pooling=pooling,
        lwbr_iters=int(m.get("lwbr_iters", 20)),
    )
