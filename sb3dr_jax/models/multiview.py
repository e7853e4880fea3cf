"""Multi-view shape encoder (teacher), sketch encoder (student) and their heads.

Every model returns `(embedding, aux)`: the embedding is what retrieval uses; aux holds the
extra outputs a loss may need (projections, predictions, per-view features).
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax.numpy as jnp

from sb3dr_jax.models.common import in_chunks, normalize_uint8
from sb3dr_jax.models.resnet import ResNet

HEAD_NORMS = ("layer", "batch")
POOLINGS = ("max", "mean", "attention")


class MLP(nn.Module):
    """Linear - Norm - ReLU - Linear (the BYOL projector/predictor shape).

    `norm="layer"` (default) keeps the heads exact under any data-parallel split; `"batch"` is
    BYOL's original BatchNorm, with statistics averaged over `axis_name` when training.
    """

    hidden: int
    out: int
    norm: str = "layer"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        """Maps [..., D] -> [..., out] (leading axes, e.g. [B, V], are batch axes)."""
        if self.norm not in HEAD_NORMS:
            raise ValueError(f"model.head_norm: unknown {self.norm!r}; choose from {HEAD_NORMS}")
        x = nn.Dense(self.hidden)(x)
        if self.norm == "batch":
            n = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                axis_name=self.axis_name if train else None,
            )
        else:
            n = nn.LayerNorm()
        x = nn.relu(n(x))
        return nn.Dense(self.out)(x)


class ViewPooling(nn.Module):
    """Pools per-view features [B, V, F] into a shape feature [B, F]: max, mean or attention."""

    kind: str = "max"

    @nn.compact
    def __call__(self, f: jnp.ndarray) -> jnp.ndarray:
        """Pools [B, V, F] over V -> [B, F]."""
        if self.kind == "max":
            return f.max(axis=1)
        if self.kind == "mean":
            return f.mean(axis=1)
        if self.kind == "attention":
            # Learned per-view relevance, softmax over views (permutation invariant).
            w = nn.softmax(
                nn.Dense(1, name="score")(nn.tanh(nn.Dense(f.shape[-1] // 2)(f))), axis=1
            )
            return (w * f).sum(axis=1)
        raise ValueError(f"model.pooling: unknown {self.kind!r}; choose from {POOLINGS}")


def chunked(backbone: ResNet, x: jnp.ndarray, chunk: int, train: bool) -> jnp.ndarray:
    """`backbone(x)` on at most `chunk` images at a time (0: all at once; `in_chunks`).

    Same result with GroupNorm (per image); BatchNorm needs the whole batch, so it is never
    chunked.

    Args:
      backbone: the (shared) ResNet.
      x: [N, H, W, C] images.
      chunk: images per backbone call; 0 or >= N: one call.
      train: forwarded to the backbone.

    Returns:
      [N, F] features.
    """
    return in_chunks(
        lambda xs: backbone(xs, train=train), 0 if backbone.norm == "batch" else chunk, x
    )


class MultiViewEncoder(nn.Module):
    """Views [B, V, H, W, C] (uint8 or float) -> (shape embedding [B, F], aux)."""

    backbone: ResNet
    pooling: str = "max"
    view_chunk: int = 0  # >0: run the backbone on at most this many views at a time

    @nn.compact
    def __call__(self, views: jnp.ndarray, train: bool = True):
        """Encodes every view with the shared backbone, then pools over views.

        Args:
          views: [B, V, H, W, C] uint8 (normalised here, on device) or floats in [0, 1].
          train: forwarded to the backbone (BatchNorm mode).

        Returns:
          (embedding [B, F] float32, {"view_features": [B, V, F]}).
        """
        if views.ndim != 5:
            raise ValueError(f"MultiViewEncoder input: expected [B, V, H, W, C], got {views.shape}")
        b = views.shape[0]
        x = normalize_uint8(views, self.backbone.dtype)
        x = einops.rearrange(x, "b v h w c -> (b v) h w c")
        f = chunked(self.backbone, x, self.view_chunk, train)  # [B * V, F]
        f = einops.rearrange(f, "(b v) f -> b v f", b=b)  # [B, V, F]
        return ViewPooling(self.pooling)(f), {"view_features": f}


class SSLModel(nn.Module):
    """Teacher: multi-view encoder + projector h + predictor q (METHODS.md section 1).

    `per_view=True` also projects and predicts every single view (the `per_view` SSL variant).
    """

    encoder: MultiViewEncoder
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    per_view: bool = False
    head_norm: str = "layer"

    def setup(self):
        axis = self.encoder.backbone.axis_name
        self.projector = MLP(self.proj_hidden, self.proj_dim, self.head_norm, axis)
        self.predictor = MLP(self.pred_hidden, self.proj_dim, self.head_norm, axis)

    def __call__(self, views: jnp.ndarray, train: bool = True):
        """Online branch.

        Args:
          views: [B, V, H, W, C] uint8 or floats in [0, 1].
          train: BatchNorm mode (backbone and heads).

        Returns:
          (embedding [B, F], aux) with aux `projection` [B, P], `prediction` [B, P],
          `view_features` [B, V, F] and, when `per_view`, `view_projection` /
          `view_prediction` [B, V, P].
        """
        emb, aux = self.encoder(views, train=train)
        z = self.projector(emb, train=train)
        aux = {**aux, "projection": z, "prediction": self.predictor(z, train=train)}
        if self.per_view:
            zv = self.projector(aux["view_features"], train=train)  # [B, V, P]
            aux.update(view_projection=zv, view_prediction=self.predictor(zv, train=train))
        return emb, aux

    def embed(self, views: jnp.ndarray):
        """Gallery descriptor: the pooled encoder output (before the projector), eval mode.

        Returns:
          (embedding [B, F], {"view_features": [B, V, F]}).
        """
        return self.encoder(views, train=False)


class SketchEncoder(nn.Module):
    """Student: sketches [B, S, S, 1] (uint8 or float) -> (embedding [B, E], aux).

    The head maps backbone features into the teacher's embedding space: an MLP
    (Linear-Norm-ReLU-Linear) when `hidden` > 0, a single linear layer when `hidden` == 0.
    """

    backbone: ResNet
    embed_dim: int = 128
    hidden: int = 512
    head_norm: str = "layer"
    chunk: int = 0  # >0: run the backbone on at most this many sketches at a time

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = True):
        """Encodes sketches.

        Args:
          images: [B, S, S, 1] uint8 (ink bright on 0) or floats in [0, 1].
          train: BatchNorm mode.

        Returns:
          (embedding [B, E] float32, {"features": [B, F] backbone features}).
        """
        if images.ndim != 4:
            raise ValueError(f"SketchEncoder input: expected [B, S, S, 1], got {images.shape}")
        x = normalize_uint8(images, self.backbone.dtype)
        f = chunked(self.backbone, x, self.chunk, train)  # [B, F]
        if self.hidden:
            head = MLP(
                self.hidden, self.embed_dim, self.head_norm, self.backbone.axis_name, name="head"
            )
            return head(f, train=train), {"features": f}
        return nn.Dense(self.embed_dim, name="head")(f), {"features": f}
