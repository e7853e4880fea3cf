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

from sb3dr_jax.models.multiview import (
    MLP,
    POOLINGS,
    MultiViewEncoder,
    SketchEncoder,
    SSLModel,
    ViewPooling,
)
from sb3dr_jax.models.resnet import PRESETS, ResNet, conv_module, resnet

__all__ = [
    "MODEL_KWARGS",
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

# Plain JSON-able keyword arguments each registered model accepts (a saved config rebuilds it).
_BACKBONE_KW = {
    "backbone", "num_filters", "norm", "groups", "dtype", "axis_name", "conv_impl", "stem", "pool",
}  # fmt: skip
MODEL_KWARGS: dict[str, set[str]] = {
    "ssl_teacher": _BACKBONE_KW
    | {"pooling", "proj_hidden", "proj_dim", "pred_hidden", "per_view", "head_norm", "view_chunk"},
    "sketch_student": _BACKBONE_KW | {"embed_dim", "hidden", "head_norm", "chunk"},
}


def backbone(kw: dict[str, Any]) -> ResNet:
    """A fresh ResNet from a `model` block (backbone, num_filters, norm, groups, dtype,
    axis_name, conv_impl, stem, pool, stage_sizes; the other keys are ignored).

    Args:
      kw: the model block, as a dict.

    Returns:
      The ResNet module, its convolution chosen by `resnet.conv_module(conv_impl)`.
    """
    dtype = kw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: unknown {dtype!r}; choose from {sorted(DTYPES)}")
    return resnet(
        kw.get("backbone", "resnet_tiny"),
        num_filters=kw.get("num_filters") or None,  # 0 / None: the preset's width
        norm=kw.get("norm", "group"),
        groups=kw.get("groups") or None,
        dtype=DTYPES[dtype],
        axis_name=kw.get("axis_name"),
        conv=conv_module(kw.get("conv_impl", "xla")),
        stem=kw.get("stem", "conv"),
        pool=kw.get("pool", "window"),
        # Optional, empty = the preset's: lets tests compile a one-stage network.
        stage_sizes=tuple(kw.get("stage_sizes") or ()) or None,
    )


def feature_dim(**kw) -> int:
    """The teacher's embedding size F for the given model kwargs (non-backbone keys ignored).

    Args:
      **kw: model kwargs as for `build_model` (backbone, num_filters, ...).

    Returns:
      F, the pooled feature size of the backbone.
    """
    return backbone(kw).feature_dim


def build_model(name: str, **kw) -> flax.linen.Module:
    """Builds a registered model.

    Args:
      name: "ssl_teacher" or "sketch_student".
      **kw: backbone (preset), num_filters (0: the preset's), norm ("group" | "batch"), groups,
        dtype ("float32" | "bfloat16" | "float16"), axis_name (BatchNorm's device axis),
        head_norm ("layer" | "batch"); teacher: pooling ("max" | "mean" | "attention"),
        proj_hidden, proj_dim, pred_hidden, per_view; student: embed_dim (required), hidden
        (0: linear head).

    Returns:
      The Flax module.

    Raises:
      ValueError: unknown name or keyword, or a missing `embed_dim` for the student.
    """
    if name not in MODEL_KWARGS:
        raise ValueError(f"model name: unknown {name!r}; choose from {sorted(MODEL_KWARGS)}")
    unknown = sorted(set(kw) - MODEL_KWARGS[name])
    if unknown:
        raise ValueError(
            f"model ({name}): unknown config keys {unknown}; known: {sorted(MODEL_KWARGS[name])}"
        )
    head_norm = kw.get("head_norm", "layer")
    if name == "ssl_teacher":
        pooling = kw.get("pooling", "max")
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling: unknown {pooling!r}; choose from {POOLINGS}")
        return SSLModel(
            MultiViewEncoder(backbone(kw), pooling, int(kw.get("view_chunk", 0))),
            proj_hidden=kw.get("proj_hidden", 512),
            proj_dim=kw.get("proj_dim", 128),
            pred_hidden=kw.get("pred_hidden", 512),
            per_view=bool(kw.get("per_view", False)),
            head_norm=head_norm,
        )
    if "embed_dim" not in kw:
        raise ValueError("model.embed_dim: required for sketch_student (the teacher's F)")
    return SketchEncoder(
        backbone(kw),
        embed_dim=int(kw["embed_dim"]),
        hidden=kw.get("hidden", 512),
        head_norm=head_norm,
        chunk=int(kw.get("chunk", 0)),
    )


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

    Raises:
      ValueError: the trees are not a teacher's / student's params, or `line_channel` is out
        of range.
    """
    try:
        teacher_bb = teacher_params["encoder"]["backbone"]
    except (KeyError, TypeError) as e:
        raise ValueError("teacher_params: expected SSLModel params with encoder/backbone") from e
    if "backbone" not in student_params:
        raise ValueError("student_params: expected SketchEncoder params with a backbone")
    c_in = teacher_bb["stem"]["kernel"].shape[2]
    if line_channel is not None and not 0 <= line_channel < c_in:
        raise ValueError(f"line_channel={line_channel}: the teacher's stem has {c_in} channels")
    src = flax.traverse_util.flatten_dict(flax.core.unfreeze(teacher_bb))
    dst = flax.traverse_util.flatten_dict(flax.core.unfreeze(student_params))
    out = dict(dst)
    for k, v in dst.items():
        if k[0] != "backbone" or k[1:] not in src:
            continue
        t = src[k[1:]]
        if k[1:] == ("stem", "kernel") and t.shape[2] != v.shape[2]:
            # [kh, kw, C, F] -> [kh, kw, 1, F]: a sketch looks like the line channel alone.
            t = (
                t[:, :, line_channel : line_channel + 1]
                if line_channel is not None
                else t.sum(2, keepdims=True)
            )
        if t.shape == v.shape:
            out[k] = jnp.asarray(t, v.dtype)
    return flax.traverse_util.unflatten_dict(out)


def param_count(params) -> int:
    """Number of scalars in a params tree.

    Args:
      params: any pytree of arrays.

    Returns:
      The total element count.
    """
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
