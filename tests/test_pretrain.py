"""Teacher run: 2 smoke steps on 8 fake devices, its logs, checkpoint and evaluation."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import smoke_config

from sb3dr_jax import pretrain
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
    model, params, _, step = pretrain.load_teacher(teacher_workdir)
    assert step == 2
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))


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
        pretrain.make_loss_fn(cfg, pretrain.teacher_model(cfg), 12)
