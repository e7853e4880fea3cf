"""Retrieval diagnosis: oracle, sketch structure, batch composition (numpy references)."""

import json

import numpy as np
import pytest

from sb3dr_jax.evals import diagnose as dg
from sb3dr_jax.evals.metrics import evaluate_retrieval


def _space(seed=0, c=6, per=(8, 8, 4, 4, 2, 2), noise=0.3):
    """Shapes around 6 orthogonal class directions (long-tailed counts) and their centres."""
    rng = np.random.default_rng(seed)
    dirs = np.eye(8)[:c]
    labels = np.repeat(np.arange(c), per)
    feats = dirs[labels] + noise * rng.normal(size=(len(labels), 8))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    centres = np.stack([feats[labels == k].mean(0) for k in range(c)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return feats, labels, centres


def test_oracle_is_at_least_as_good_as_its_noisy_versions_and_chance_is_right():
    feats, labels, centres = _space()
    q = np.repeat(np.arange(6), 3)
    rep = dg.oracle_report(feats, labels, centres, q, num_classes=6, thresholds=(8, 2))
    assert rep["acc=1"]["mAP"] > 0.95  # well-separated classes: the ceiling is ~1
    assert rep["acc=1"]["mAP"] >= rep["acc=0.5"]["mAP"] >= rep["acc=0.1"]["mAP"]
    # Chance: mean over queries of C_q / N.
    np.testing.assert_allclose(rep["chance_mAP"], np.mean(np.bincount(labels)[q] / len(labels)))
    # The full-accuracy oracle is exactly `evaluate_retrieval` with centres as queries.
    ref = evaluate_retrieval(centres[q], q, feats, labels, group_thresholds=(8, 2), num_classes=6)
    assert rep["acc=1"]["mAP"] == ref["mAP"]


def test_oracle_queries_wrong_share_and_never_their_own_class():
    _, _, centres = _space()
    centres[5] = 0.0  # a class without shapes is never an answer
    q = np.repeat(np.arange(5), 200)
    out = dg.oracle_queries(q, centres, 0.3, seed=1)
    own = (out == centres[q]).all(1)
    assert abs(own.mean() - 0.3) < 0.05
    assert not (out == 0).all(1).any()


def test_sketch_report_and_centre_accuracy():
    feats, labels, centres = _space(noise=0.05)
    rep = dg.sketch_report(feats, labels, feats + 0.01, labels, centres)
    assert rep["nn_acc_to_train"] == 1.0 and rep["centre_acc"] == 1.0
    # Numpy reference for the nearest-centre accuracy on a shuffled copy.
    perm = np.random.default_rng(0).permutation(len(labels))
    sim = feats @ centres.T
    ref = np.mean(sim.argmax(1) == labels[perm])
    assert dg.nearest_centre_accuracy(feats, labels[perm], centres) == ref


def test_teacher_report_and_batch_report():
    feats, labels, _ = _space(noise=0.1)
    rep = dg.teacher_report(feats, labels, num_classes=6, thresholds=(8, 2))
    assert rep["knn_acc"] > 0.9 and {"mAP_head", "mAP_tail", "knn_acc_tail"} <= set(rep)
    b = dg.batch_report(np.repeat(np.arange(40), 3), global_batch=16, pk_k=4, num_batches=50)
    assert b["pk"] == 1.0 and b["shuffle"] < 0.5 and b["num_classes"] == 40
    assert dg.ink_fraction(np.array([[0, 255], [40, 10]], np.uint8)) == 0.5


@pytest.mark.slow
def test_diagnose_run_on_the_smoke_teacher_and_student(teacher_workdir, student_workdir, tmp_path):
    from sb3dr_jax import diagnose

    out = tmp_path / "d.json"
    rep = diagnose.run(teacher_workdir, [student_workdir], str(out), global_batch=8, pk_k=2)
    assert json.loads(out.read_text())["teacher"]["knn_acc"] == rep["teacher"]["knn_acc"]
    assert rep["batches"]["pk"] == 1.0
    assert 0.0 <= rep["oracle"]["acc=1"]["mAP"] <= 1.0
    assert {"mAP", "ink"} <= set(rep["raster"]["stored"])  # zero-shot probe ran
    assert {"train", "test"} <= set(rep["students"][student_workdir])


def test_summarize_reports_mean_and_spread_over_seeds(tmp_path):
    from launch.experiments import summarize

    for seed, v in enumerate([0.1, 0.3]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        rows = [{"step": 1, "train/loss": 1.0}, {"step": 2, "eval/sketch_test/mAP": v}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    table = summarize.summarize(
        {"A": [str(tmp_path / "s0"), str(tmp_path / "s1")]}, ["eval/sketch_test/mAP"]
    )
    cell = table["A"]["eval/sketch_test/mAP"]
    np.testing.assert_allclose([cell["mean"], cell["std"]], [0.2, 0.1])
    assert "0.200 ± 0.100 (2)" in summarize.markdown(table, ["eval/sketch_test/mAP"])


def test_summarize_reads_compare_results_and_accumulates_globs(tmp_path):
    from launch.experiments import summarize

    for seed, v in enumerate([0.4, 0.6]):
        d = tmp_path / ("cmp" if seed == 0 else f"cmp_s{seed}")
        d.mkdir()
        groups = {g: {"mAP": v / 2} for g in ("head", "medium", "tail")}
        res = {"cgn": {"mAP": v, "NN": 0.5, "groups": groups, "pr_curve": [1.0]}}
        (d / "results.json").write_text(json.dumps({"budget": {}, "results": res}))
    specs = [f"cgn={tmp_path}/cmp/results.json#cgn", f"cgn={tmp_path}/cmp_s*/results.json#cgn"]
    rows = summarize.rows_from_specs(specs)
    assert len(rows["cgn"]) == 2
    keys = ["eval/sketch_test/mAP", "eval/sketch_test/mAP_tail"]
    table = summarize.summarize(rows, keys)
    np.testing.assert_allclose(table["cgn"][keys[0]]["values"], [0.4, 0.6])
    np.testing.assert_allclose(table["cgn"][keys[1]]["mean"], 0.25)
    with pytest.raises(KeyError, match="no results for 'dca'.*cgn"):
        summarize.final_metrics(f"{tmp_path}/cmp/results.json#dca")
    with pytest.raises(ValueError, match="no workdir matches"):
        summarize.rows_from_specs([f"x={tmp_path}/none*/results.json#cgn"])
