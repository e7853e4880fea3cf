"""Teacher run: 2 smoke steps on 8 fake devices, its logs, checkpoint and evaluation."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import smoke_config

from sb3dr_jax import pretrain, teacher
from sb3dr_jax.configs import pretrain as pretrain_config
from sb3dr_jax.train import load_config


def test_pretrain_smoke_run(teacher_workdir):
    assert jax.device_count() == 8
    rows = [json.loads(line) for line in open(os.path.join(teacher_workdir, "metrics.jsonl"))]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["train/loss"]) for r in train)
    ev = [r for r in rows if "eval/shapes/mAP" in r]
    assert ev and ev[-1]["step"] == 2
    for key in ("eval/shapes/knn_acc", "eval/shapes/mAP", "eval/shapes/mAP_tail"):
        assert 0.0 <= ev[-1][key] <= 1.0, key
    cfg = load_config(teacher_workdir)
    assert cfg.ssl.method == "byol" and cfg.longtail.method == "bcl"
    t = teacher.load(teacher_workdir)
    assert t.step == 2 and t.config.ssl.method == "byol"
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(t.params))


@pytest.mark.parametrize("arg", ["smoke,method=simsiam,longtail=sdclr", "smoke,method=per_view"])
def test_pretrain_variants_run(smoke_data_dir, tmp_path, arg):
    cfg = pretrain_config.get_config(arg)
    cfg.dataset.data_dir = smoke_data_dir
    cfg.total_steps, cfg.eval_every = 1, 0
    state = pretrain.run(cfg, str(tmp_path))
    assert int(state.step) == 1
    assert ("target" in state.extra) == (cfg.ssl.method == "byol" or arg.endswith("per_view"))
    if "sdclr" in arg:
        assert "masks" in state.extra


def test_pretrain_config_variants():
    c = pretrain_config.get_config("smoke,method=simsiam,longtail=none")
    assert (c.ssl.method, c.longtail.method, c.total_steps) == ("simsiam", "none", 2)
    c = pretrain_config.get_config("dataset=tub16")
    assert c.dataset.name == "shared" and c.dataset.root.endswith("tub16-psb-dev")


def test_views_per_branch_too_large(smoke_data_dir):
    cfg = smoke_config("pretrain", smoke_data_dir)
    cfg.ssl.views_per_branch = 7
    with pytest.raises(ValueError, match="views_per_branch"):
        teacher.loss_fn(cfg, teacher.model(cfg), 12)


@pytest.mark.parametrize("field,value", [("ssl.method", "byoll"), ("longtail.method", "focal")])
def test_unknown_method_names_the_field(smoke_data_dir, tmp_path, field, value):
    """An unknown method is a ConfigError naming the field and the choices (no silent BYOL),
    raised by `build` and by `pretrain.run` before any data is read."""
    from sb3dr_jax.configs.common import ConfigError

    cfg = smoke_config("pretrain", smoke_data_dir, **{field: value})
    views = np.zeros((1, 12, 8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match=rf"{field}: unknown '{value}'; choose from \["):
        teacher.build(cfg, example_views=views, num_shapes=4, num_views=12)
    with pytest.raises(ConfigError, match=field):
        pretrain.run(cfg, str(tmp_path))


@pytest.mark.parametrize("method", ["byol", "per_view"])
def test_teacher_loss_same_with_view_chunks(smoke_data_dir, method):
    # Chunked views are augmented chunk by chunk (augment_images(chunk=...)) in the order the
    # encoder reads them: the same draws, so the loss equals the unchunked step's (GroupNorm).
    losses = []
    for chunk in (0, 3):  # 3: uneven chunks of the 4 x 2k views
        cfg = smoke_config("pretrain", smoke_data_dir, **{"model.view_chunk": chunk})
        cfg.ssl.method = method
        res = cfg.dataset.render.resolution
        views = np.random.default_rng(0).integers(0, 255, (4, 12, res, res, 3), dtype=np.uint8)
        losses.append(_one_step_loss(cfg, views)[:2])
    np.testing.assert_allclose(losses[1][0], losses[0][0], rtol=1e-5)
    np.testing.assert_allclose(losses[1][1], losses[0][1], rtol=1e-5, atol=1e-6)


def _one_step_loss(cfg, views):
    """(loss, per-sample losses, aux) of the teacher loss on one device."""
    cfg.total_steps = 10
    exp = teacher.build(cfg, example_views=views[:1], num_shapes=4, num_views=12)
    state = exp.state
    batch = {"views": views, "index": np.arange(4), "label": np.zeros(4, np.int32)}
    loss_fn = teacher.loss_fn(cfg, exp.model, 12)
    one_device = jax.pmap(lambda p, s, b: loss_fn(p, s, b, jax.random.key(1), {}), "data")
    lead = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x)[None], t)
    loss, (_, aux) = one_device(*lead((state.params, state, batch)))
    return float(loss[0]), np.asarray(aux["per_sample"][0]), aux, state


def test_teacher_loss_same_with_rows_augmentation():
    # augment.impl="rows" (one gather of whole pixels from the uint8 views, the GPU config's
    # candidate) draws and resamples exactly as "map_coordinates".
    out = []
    for impl in ("map_coordinates", "rows"):
        cfg = smoke_config("pretrain", "unused", **{"augment.impl": impl})
        res = cfg.dataset.render.resolution
        views = np.random.default_rng(0).integers(0, 255, (4, 12, res, res, 3), dtype=np.uint8)
        out.append(_one_step_loss(cfg, views)[:2])
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-5, atol=1e-6)


def test_teacher_batchnorm_keeps_running_statistics():
    # model.norm="batch" (statistics averaged over the data axis): the step runs, and the new
    # running statistics come back in aux for post_update to store in state.extra.
    cfg = smoke_config("pretrain", "unused", **{"model.norm": "batch"})
    cfg.model.axis_name = "data"
    res = cfg.dataset.render.resolution
    views = np.random.default_rng(0).integers(0, 255, (4, 12, res, res, 3), dtype=np.uint8)
    loss, _, aux, state = _one_step_loss(cfg, views)
    assert np.isfinite(loss) and "batch_stats" in state.extra
    new = jax.tree_util.tree_leaves(aux["batch_stats"])
    old = jax.tree_util.tree_leaves(state.extra["batch_stats"])
    assert len(new) == len(old) and any(not np.allclose(a[0], b) for a, b in zip(new, old))
    # The whole step (make_step + post_update) stores them.
    from sb3dr_jax.train import data_parallel

    dp = data_parallel("pmap", jax.devices()[:1])
    step = dp.step(
        teacher.build(cfg, example_views=views[:1], num_shapes=4, num_views=12,
                      steps_per_epoch=4).step
    )  # fmt: skip
    batch = {"views": views[None], "index": np.arange(4)[None], "label": np.zeros((1, 4), np.int32)}
    new_state, _ = step(dp.replicate(state), batch, jax.random.key(1), {})
    stored = [np.asarray(a[0]) for a in jax.tree_util.tree_leaves(new_state.extra["batch_stats"])]
    assert all(np.all(np.isfinite(a)) for a in stored)
    assert any(not np.allclose(a, b) for a, b in zip(stored, old))  # updated, not the initial
