"""Tests for the evaluation report writers (markdown, JSON, CSV, PR plot)."""

import json
import os

import numpy as np

from sb3dr_jax.evals import metrics, report


def test_write_all_reports(tmp_path):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(12, 8)), rng.normal(size=(20, 8))
    ql, gl = rng.integers(0, 3, 12), np.arange(20) % 3
    res = metrics.evaluate_retrieval(q, ql, g, gl, class_names=["a", "b", "c"])
    results = {"m1": res, "m2": res}
    table = report.markdown_table(results)
    assert "m1" in table and "mAP" in table
    paths = report.write_all(str(tmp_path), results)
    for p in paths.values():
        assert os.path.getsize(p) > 0
    with open(tmp_path / "metrics.json") as f:
        loaded = json.load(f)
    np.testing.assert_allclose(loaded["m1"]["mAP"], res["mAP"])


def test_pr_curve_lines_are_told_apart_past_ten_methods():
    # The comparison plots 12 methods; matplotlib's cycle repeats its colours after ten.
    styles = report.line_styles(45)
    keys = [tuple(sorted(s.items())) for s in styles]
    assert len(set(keys)) == 45
    assert styles[0]["color"] == styles[10]["color"] and styles[0] != styles[10]
