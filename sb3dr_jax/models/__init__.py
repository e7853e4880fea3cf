"""Model registry: config names -> Flax modules that return `(embedding, aux)`.

`build_model` takes plain JSON-able keyword arguments, so a saved config (or the serving
export) rebuilds exactly the model that was trained.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from sb3dr_jax.models.multiview import MLP, MultiViewEncoder, SketchEncoder, SSLModel, ViewPooling
from sb3dr_jax.models.resnet import PRESETS, ResNet, resnet

__all__ = [
    "MLP",
    "MultiViewEncoder",
    "PRESETS",
    "ResNet",
    "SSLModel",
    "SketchEncoder",
    "ViewPooling",
    "build_model",
    "feature_dim",
    "init_student_from_teacher",
    "param_count",
    "resnet",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _backbone(kw: dict[str, Any]) -> ResNet:
    return resnet(
        kw.get("backbone", "resnet_tiny"),
        num_filters=kw.get("num_filters") or None,
        norm=kw.get("norm", "group"),
        dtype=DTYPES[kw.get("dtype", "float32")],
        axis_name=kw.get("axis_name"),
    )


def feature_dim(**kw) -> int:
    """The teacher's embedding size F for the given backbone kwargs."""
    bb = _backbone(kw)
    return bb.num_filters * 2 ** (len(bb.stage_sizes) - 1) * (4 if bb.block == "bottleneck" else 1)


def build_model(name: str, **kw) -> flax.linen.Module:
    """Builds a registered model.

    Args:
      name: "ssl_teacher" or "sketch_student".
      **kw: backbone (preset), num_filters, norm ("group" | "batch"), dtype ("float32" |
        "bfloat16"), axis_name; teacher: pooling, proj_hidden, proj_dim, pred_hidden, per_view;
        student: embed_dim, hidden.

    Returns:
      The Flax module.
    """
    if name == "ssl_teacher":
        return SSLModel(
            MultiViewEncoder(_backbone(kw), kw.get("pooling", "max")),
            proj_hidden=kw.get("proj_hidden", 512),
            proj_dim=kw.get("proj_dim", 128),
            pred_hidden=kw.get("pred_hidden", 512),
            per_view=kw.get("per_view", False),
        )
    if name == "sketch_student":
        return SketchEncoder(_backbone(kw), embed_dim=kw["embed_dim"], hidden=kw.get("hidden", 512))
    raise ValueError(f"model name: unknown {name!r} (ssl_teacher | sketch_student)")


def init_student_from_teacher(student_params, teacher_params, line_channel: int | None = None):
    """Copies the teacher's view-encoder backbone into the student's backbone.

    Line-drawing views look like sketches, so the teacher's backbone is a good start. The stem
    convolution sees C view channels in the teacher and one sketch channel in the student: it
    takes the teacher's `line` channel slice when its index is given, else the channel sum.

    Args:
      student_params: params of `SketchEncoder` (the `params` collection).
      teacher_params: params of `SSLModel`.
      line_channel: index of the `line` channel among the teacher's view channels.

    Returns:
      New student params; leaves whose shapes do not match are kept from the student.
    """
    src = flax.traverse_util.flatten_dict(flax.core.unfreeze(teacher_params["encoder"]["backbone"]))
    dst = flax.traverse_util.flatten_dict(flax.core.unfreeze(student_params))
    out = dict(dst)
    for k, v in dst.items():
        if k[0] != "backbone" or k[1:] not in src:
            continue
        t = src[k[1:]]
        if k[1:] == ("stem", "kernel") and t.shape[2] != v.shape[2]:
            t = (
                t[:, :, line_channel : line_channel + 1]
                if line_channel is not None
                else t.sum(2, keepdims=True)
            )
        if t.shape == v.shape:
            out[k] = jnp.asarray(t, v.dtype)
    return flax.traverse_util.unflatten_dict(out)


def param_count(params) -> int:
    """Number of scalars in a params tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
