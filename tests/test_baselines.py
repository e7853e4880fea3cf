"""The baselines harness (issue 17): every method builds and steps, device-count invariance
under pmap and shard_map, loud registries, and one end-to-end run of `launch.compare`'s code
path on the smoke data (every method, 2 steps)."""

from __future__ import annotations

import json
import os

import chex
import jax
import numpy as np
import pytest

from sb3dr_jax import compare
from sb3dr_jax.baselines import BASELINES, build
from sb3dr_jax.baselines import harness as bh
from sb3dr_jax.baselines.methods import class_centres
from sb3dr_jax.baselines.model import joint_model
from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.configs.compare import get_config
from sb3dr_jax.train import data_parallel

C, S, VIEWS = 4, 16, (2, 16, 16, 3)


def tiny_config(method: str = "dca"):
    """One-stage ResNet of width 4 on 16 px inputs: each step compiles in about 3 s."""
    cfg = get_config("smoke")
    cfg.method = method
    cfg.model.update(num_filters=4, conv_impl="xla", hidden=0, embed_dim=8, stage_sizes=(1,))
    cfg.augment = False  # the smoke run below covers the augmentation
    return cfg


def tiny_batch(d: int, seed: int = 0) -> dict:
    """8 sketches (2 per class) and their paired shapes' views, split over d devices."""
    rng = np.random.default_rng(seed)
    g = 8
    batch = {
        "image": rng.integers(0, 256, (g, S, S, 1), dtype=np.uint8),
        "label": np.repeat(np.arange(C), 2).astype(np.int32),
        "views": rng.integers(0, 256, (g, *VIEWS), dtype=np.uint8),
    }
    return {k: v.reshape((d, g // d) + v.shape[1:]) for k, v in batch.items()}


def stage_consts(name: str, stage: int) -> dict:
    if name == "cgn" and stage == 1:
        return {"centres": np.eye(C, 8, dtype=np.float32)}
    if name == "quadruplet":
        return {"soft_targets": np.full((C, C), 1.0 / C, np.float32)}
    return {}


def train_steps(exp, dp, batch, n: int = 2):
    step = dp.step(exp.step)
    state, consts = dp.replicate(exp.state), dp.replicate(exp.consts)
    metrics = None
    for _ in range(n):
        state, metrics = step(state, dp.shard(batch), jax.random.key(0), consts)
    return dp.unreplicate(state), dp.first(metrics)


def changed(a, b) -> bool:
    return any(
        not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_every_method_builds_and_steps():
    dp = data_parallel("pmap", jax.devices()[:1])
    batch = tiny_batch(1)
    assert len(BASELINES) == 8
    for name in BASELINES:
        method = BASELINES.get(name)
        for i, st in enumerate(method.stages):
            exp = build(
                tiny_config(name),
                num_classes=C,
                sketch_size=S,
                view_shape=VIEWS,
                stage=i,
                consts=stage_consts(name, i),
            )
            assert exp.info["method"] == name and exp.info["stage"] == st.name
            final, metrics = train_steps(exp, dp, batch)
            assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0, (name, metrics)
            assert int(final.step) == 2
            net0, net1 = exp.state.params["net"], final.params["net"]
            assert changed(net0["sketch"], net1["sketch"]) == ("sketch" in st.uses), name
            # Only the encoders the stage trains move (CGN's student keeps its teacher's).
            assert changed(net0["shape"], net1["shape"]) == ("shape" in st.uses), name
            if name == "dca":  # the discriminator's own optimiser stepped inside the step
                assert changed(exp.state.extra["disc"], final.extra["disc"])
                assert int(jax.tree.leaves(final.extra["disc_opt"])[0]) == 2
            if name == "cmsd":  # the class memories moved off uniform
                assert changed(exp.state.extra["view_memory"], final.extra["view_memory"])
            if name == "tcl":
                assert changed(exp.state.params["centres"], final.params["centres"])


@pytest.mark.parametrize("name", ["dca"])
def test_one_device_pmap_and_shard_map_agree(name):
    """The loss runs over the gathered global batch: 1 device and 8 (either dispatch) match."""
    cfg = tiny_config(name)
    exp = build(cfg, num_classes=C, sketch_size=S, view_shape=VIEWS)
    one, m1 = train_steps(exp, data_parallel("pmap", jax.devices()[:1]), tiny_batch(1), n=1)
    for mode in ("pmap", "shard_map"):
        many, m8 = train_steps(exp, data_parallel(mode), tiny_batch(8), n=1)
        np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-4)
        chex.assert_trees_all_close(many.params, one.params, atol=1e-4)
        chex.assert_trees_all_close(many.extra["disc"], one.extra["disc"], atol=1e-4)


def test_registries_name_their_field():
    with pytest.raises(ConfigError, match=r"method: unknown 'nope'.*dca"):
        BASELINES.get("nope")
    with pytest.raises(ConfigError, match=r"method: unknown 'nope'"):
        build(tiny_config("nope"), num_classes=C, sketch_size=S, view_shape=VIEWS)
    with pytest.raises(ConfigError, match=r"methods: unknown 'nope'.*ssltkd"):
        compare.check_methods(["dca", "nope"])
    with pytest.raises(ConfigError, match=r"methods: .* twice"):
        compare.check_methods(["dca", "dca"])
    with pytest.raises(ValueError, match=r"method pooling: unknown 'sum'"):
        joint_model(tiny_config().model, "sum")
    cfg = tiny_config("tcl")
    cfg.hp = {"tcl": {"margn": 1.0}}
    with pytest.raises(ValueError, match=r"hp.tcl: unknown \['margn'\]"):
        bh.method_hp(cfg, BASELINES.get("tcl"), C)
    cfg.trials = 9
    with pytest.raises(ValueError, match="trials=9"):
        bh.trial_configs(cfg)


def test_class_centres_trials_and_selection():
    emb = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], np.float32)
    out = class_centres(emb, np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(out, [[1, 0], [0, 0], [0, 1]])  # class 1: no shape, zero row
    cfg = tiny_config()
    cfg.trials = 3
    lrs = [c.optim.lr for c in bh.trial_configs(cfg)]
    np.testing.assert_allclose(lrs, [cfg.optim.lr * f for f in cfg.lr_factors[:3]])
    assert bh.select([{"val": {"mAP": 0.2}}, {"val": {"mAP": 0.5}}, {"val": {"mAP": 0.1}}]) == 1


@pytest.mark.slow
def test_compare_every_method_two_steps_on_smoke_data(
    smoke_data_dir, teacher_workdir, tmp_path, capsys
):
    cfg = get_config("smoke,val,trials=1")
    cfg.dataset.data_dir = smoke_data_dir
    cfg.model.update(num_filters=4, conv_impl="xla", stage_sizes=(1,))
    cfg.augment = False  # one compilation less per baseline; the step is the same code path
    cfg.log_every = cfg.ckpt_every = 2  # one checkpoint per run: orbax saves cost ~1 s each
    # The session's smoke teacher serves both variants (training one is `pretrain.run`, tested
    # in test_pretrain/test_launch); a given teacher's time counts as 0.
    cfg.teachers.bcl = cfg.teachers.none = teacher_workdir
    out = str(tmp_path / "cmp")
    results = compare.run(cfg, out)
    assert list(results) == list(cfg.methods)
    assert set(cfg.methods) == set(BASELINES.names()) | set(compare.THESIS.names())
    for name, r in results.items():
        assert 0.0 < r["mAP"] <= 1.0 and "val" in r and r["train_s"] > 0, name
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)["results"]
    assert saved["dca"]["mAP"] == pytest.approx(results["dca"]["mAP"])
    table = open(os.path.join(out, "results.md")).read()
    for name in cfg.methods:
        assert f"| {name} |" in table
    assert os.path.getsize(os.path.join(out, "pr_curves.png")) > 0
    capsys.readouterr()
    again = compare.run(cfg, out)  # resumes: nothing trains again
    assert capsys.readouterr().out.count("done in an earlier run") == len(cfg.methods)
    assert again["cgn"]["mAP"] == pytest.approx(results["cgn"]["mAP"])
