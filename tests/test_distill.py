"""Student run: 2 smoke steps against the smoke teacher, the table cache, the export."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from conftest import smoke_config

from sb3dr_jax import distill, student, teacher
from sb3dr_jax.configs import distill as distill_config
from sb3dr_jax.configs.common import ConfigError


def test_distill_smoke_run(student_workdir, teacher_workdir):
    rows = [json.loads(line) for line in open(os.path.join(student_workdir, "metrics.jsonl"))]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["train/loss"]) for r in train)
    final = [r for r in rows if "eval/sketch_test/mAP" in r]
    assert final and 0.0 <= final[-1]["eval/sketch_test/mAP"] <= 1.0
    assert os.path.isdir(os.path.join(student_workdir, "export"))
    # The web assets travel with the export: one thumbnail and mesh per gallery model.
    web = json.load(open(os.path.join(student_workdir, "export", "web", "manifest.json")))
    assert web["models"] and all(m.get("thumbnail") and m.get("mesh") for m in web["models"])
    assert web["sketches"] and not web["skipped"]
    # The table is cached next to the teacher checkpoint, keyed by its step and fingerprint.
    (path,) = glob.glob(os.path.join(teacher_workdir, "teacher_features_2_*.npz"))
    cached = np.load(path)
    assert str(cached["teacher_id"]) == teacher.fingerprint(teacher.load(teacher_workdir).params)
    assert np.all(np.isfinite(cached["raw"]))


def test_distill_without_teacher_names_the_command(smoke_data_dir, tmp_path):
    cfg = smoke_config("distill", smoke_data_dir, teacher_workdir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="python -m launch.pretrain"):
        distill.run(cfg, str(tmp_path / "student"))


def test_distill_reuses_cache_and_runs_ablation(smoke_data_dir, teacher_workdir, tmp_path):
    (path,) = glob.glob(os.path.join(teacher_workdir, "teacher_features_2_*.npz"))
    before = os.path.getmtime(path)
    cfg = distill_config.get_config("smoke,plain_triplet")
    cfg.dataset.data_dir = smoke_data_dir
    cfg.teacher_workdir, cfg.total_steps = teacher_workdir, 1
    summary = distill.run(cfg, str(tmp_path))
    assert os.path.getmtime(path) == before  # unchanged checkpoint: the table was not rebuilt
    assert 0.0 <= summary["mAP"] <= 1.0


def test_distill_config_ablations():
    c = distill_config.get_config("no_kd")
    assert c.loss.terms.to_dict() == {"cen": 0, "rel": 0, "kl": 0, "et": 1}
    assert [n for n, _, _ in student.loss_terms(c)] == ["et"]
    assert c.loss.mu > 0
    c = distill_config.get_config("plain_triplet")
    assert (c.loss.mu, c.loss.nu) == (0, 0)
    assert [n for n, _, _ in student.loss_terms(c)] == ["et"]
    c = distill_config.get_config("")
    assert [n for n, _, _ in student.loss_terms(c)] == ["cen", "rel", "kl", "et"]
    assert distill_config.get_config("pkaug").loss.terms.kl == 100.0


def test_unknown_loss_term_names_the_field(smoke_data_dir, teacher_workdir, tmp_path):
    """`loss.terms` with an unknown name: a ConfigError naming the field and the choices, from
    the library and from `distill.run` before any work."""
    cfg = smoke_config("distill", smoke_data_dir, teacher_workdir=teacher_workdir)
    cfg.loss.terms.triplet = 1.0
    with pytest.raises(ConfigError, match=r"loss.terms: unknown 'triplet'; choose from \['cen'"):
        student.loss_terms(cfg)
    with pytest.raises(ConfigError, match="loss.terms"):
        distill.run(cfg, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_pkaug_recipe_keeps_its_schedule():
    """`pkaug` is batch 64 x 2000 steps (the validated qd90 recipe); the defaults once overwrote
    it with 32 x 800 because they were set after the recipe."""
    c = distill_config.get_config("pkaug")
    assert (c.global_batch, c.total_steps, c.sketch_data.sampler) == (64, 2000, "pk")
    c = distill_config.get_config("pkaug,gpu")
    assert c.global_batch == 256 and c.sketch_data.sampler == "pk"


def test_online_teacher_and_class_balanced_sampling_run(smoke_data_dir, teacher_workdir, tmp_path):
    cfg = distill_config.get_config("smoke,online_teacher,balanced")
    cfg.dataset.data_dir = smoke_data_dir
    cfg.teacher_workdir, cfg.total_steps = teacher_workdir, 1
    summary = distill.run(cfg, str(tmp_path))
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert np.isfinite([r["train/loss"] for r in rows if "train/loss" in r]).all()
    assert 0.0 <= summary["mAP"] <= 1.0


def test_online_teacher_targets_match_the_cached_table(smoke_builder, teacher_workdir):
    """The online teacher embeds the paired shapes' views into the cached table's space."""
    from sb3dr_jax.models.common import l2_normalize
    from sb3dr_jax.train import data_parallel

    t = teacher.load(teacher_workdir)
    table = student.teacher_table(t, smoke_builder, data_parallel("pmap"), global_batch=8)
    views = distill._shape_views(smoke_builder, table.ids)  # rows in table order
    emb, _ = t.model.apply({"params": t.params}, views[:4], method="embed")
    online = l2_normalize(l2_normalize(emb) - table.mean)
    np.testing.assert_allclose(np.asarray(online), table.features[:4], atol=1e-4)


class _WithoutSplit:
    """A prepared builder whose `sketch_test` split was left empty by the build."""

    def __init__(self, builder, split):
        self._b, self._split = builder, split

    def __getattr__(self, name):
        return getattr(self._b, name)

    @property
    def info(self):
        info = self._b.info

        class Info:
            splits = {k: v for k, v in info.splits.items() if k != self._split}
            full_name, metadata = info.full_name, info.metadata

        return Info()


def test_distill_checks_its_splits_before_training(
    smoke_data_dir, smoke_builder, monkeypatch, tmp_path
):
    """A build without test sketches stops before any training step (issue 19.3)."""
    from sb3dr_jax.data.errors import LayoutError

    monkeypatch.setattr(
        distill, "dataset_from_config", lambda cfg: _WithoutSplit(smoke_builder, "sketch_test")
    )
    monkeypatch.setattr(distill, "fit", lambda **kw: pytest.fail("trained without a test split"))
    cfg = smoke_config("distill", smoke_data_dir, teacher_workdir="unused")
    monkeypatch.setattr(distill, "teacher_table", lambda *a, **k: pytest.fail("loaded teacher"))
    teacher_cfg = smoke_config("pretrain", smoke_data_dir)
    monkeypatch.setattr("sb3dr_jax.train.loop.load_config", lambda w: teacher_cfg)
    with pytest.raises(LayoutError, match=r"build_report.json: distill needs .*sketch_test"):
        distill.run(cfg, str(tmp_path))


def test_a_failing_final_evaluation_keeps_the_export(smoke_data_dir, teacher_workdir, tmp_path):
    """The export of a finished training run is written before its final evaluation."""
    cfg = smoke_config("distill", smoke_data_dir, teacher_workdir=teacher_workdir)
    cfg.total_steps = 1

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(distill, "fit", lambda **kw: kw["state"])  # training itself is tested above
        m.setattr(distill, "evaluate_student", broken)
        with pytest.raises(RuntimeError, match="evaluation failed"):
            distill.run(cfg, str(tmp_path))
    assert (tmp_path / "export" / "student.json").exists()
    assert (tmp_path / "export" / "index.npz").exists()


def test_pk_sampling_with_validation_split_reports_val_metrics(
    smoke_data_dir, teacher_workdir, tmp_path
):
    """`sketch_data`: P x K batches from the training part, `eval/sketch_val/*` from the rest."""
    cfg = distill_config.get_config("smoke,val=0.5")
    cfg.dataset.data_dir = smoke_data_dir
    cfg.teacher_workdir, cfg.total_steps = teacher_workdir, 2
    cfg.sketch_data.update(sampler="pk", pk_k=2)
    cfg.sketch_aug.update(elastic=1.5, erase=1)
    summary = distill.run(cfg, str(tmp_path))
    assert 0.0 <= summary["val"]["mAP"] <= 1.0
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert any("eval/sketch_val/mAP" in r for r in rows)
    cfg.sketch_data.sampler = "nope"
    with pytest.raises(ValueError, match="sketch_data.sampler"):
        distill.run(cfg, str(tmp_path / "bad"))
