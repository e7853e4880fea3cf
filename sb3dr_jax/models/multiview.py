"""Multi-view shape encoder (teacher), sketch encoder (student) and their heads.

Every model returns `(embedding, aux)`: the embedding is what retrieval uses; aux holds the
extra outputs a loss may need (projections, predictions, per-view features).
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax.numpy as jnp

from sb3dr_jax.models.common import normalize_uint8
from sb3dr_jax.models.resnet import ResNet


class MLP(nn.Module):
    """Linear - LayerNorm - ReLU - Linear (the BYOL projector/predictor shape).

    LayerNorm rather than BatchNorm keeps the heads exact under any data-parallel split.
    """

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Dense(self.hidden)(x)
        x = nn.relu(nn.LayerNorm()(x))
        return nn.Dense(self.out)(x)


class ViewPooling(nn.Module):
    """Pools per-view features [B, V, F] into a shape feature [B, F]: max, mean or attention."""

    kind: str = "max"

    @nn.compact
    def __call__(self, f: jnp.ndarray) -> jnp.ndarray:
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
        raise ValueError(f"model.pooling: unknown {self.kind!r} (max | mean | attention)")


class MultiViewEncoder(nn.Module):
    """Views [B, V, H, W, C] (uint8 or float) -> (shape embedding [B, F], aux)."""

    backbone: ResNet
    pooling: str = "max"

    @nn.compact
    def __call__(self, views: jnp.ndarray, train: bool = True):
        b = views.shape[0]
        x = normalize_uint8(views, self.backbone.dtype)
        f = self.backbone(einops.rearrange(x, "b v h w c -> (b v) h w c"), train=train)
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

    def setup(self):
        self.projector = MLP(self.proj_hidden, self.proj_dim)
        self.predictor = MLP(self.pred_hidden, self.proj_dim)

    def __call__(self, views: jnp.ndarray, train: bool = True):
        emb, aux = self.encoder(views, train=train)
        z = self.projector(emb)
        aux = {**aux, "projection": z, "prediction": self.predictor(z)}
        if self.per_view:
            zv = self.projector(aux["view_features"])  # [B, V, P]
            aux.update(view_projection=zv, view_prediction=self.predictor(zv))
        return emb, aux

    def embed(self, views: jnp.ndarray):
        """Gallery descriptor: the pooled encoder output (before the projector)."""
        return self.encoder(views, train=False)


class SketchEncoder(nn.Module):
    """Student: sketches [B, S, S, 1] (uint8 or float) -> (embedding [B, E], aux)."""

    backbone: ResNet
    embed_dim: int = 128
    hidden: int = 512

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = True):
        f = self.backbone(normalize_uint8(images, self.backbone.dtype), train=train)
        return MLP(self.hidden, self.embed_dim, name="head")(f), {"features": f}
