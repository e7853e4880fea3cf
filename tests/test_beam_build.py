"""Dataset builds on Apache Beam: the same records and the same skip report as in-process.

Apache Beam is an optional extra whose pins clash with the main environment, so `.ci/run` runs
this file in a separate virtual environment with `.[beam,dev]`. In the main environment the
Beam tests skip (saying why) and the rest runs: the shared per-item functions, and the
launcher's one-line error when Beam is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sb3dr_jax.configs.common import ConfigError, dataset_config
from sb3dr_jax.data import dataset_from_config
from sb3dr_jax.data import items as items_lib
from sb3dr_jax.data.errors import MeshError
from sb3dr_jax.data.render import RenderConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_BEAM = importlib.util.find_spec("apache_beam") is not None
needs_beam = pytest.mark.skipif(
    not HAS_BEAM,
    reason="apache_beam not installed (the `beam` extra; .ci/run runs this file in its own venv)",
)
SETTINGS = items_lib.ItemSettings(RenderConfig(num_views=2, resolution=8), 100, 8, 2.0, ("a", "b"))


def _dropped(stage: str, position: int, label: int, left_out: bool = False):
    skip = None
    if not left_out:
        err = MeshError(f"m{position}.off", "truncated")
        skip = {"item": f"item {position}", "path": err.path, "reason": err.reason, "stage": stage}
    return items_lib.Outcome(stage, position, str(position), label, skip=skip, left_out=left_out)


def test_record_index_numbers_kept_items_in_list_order():
    dropped = [0, 3, 4]  # of positions 0..6: kept 1, 2, 5, 6
    assert [items_lib.record_index(p, dropped) for p in (1, 2, 5, 6)] == [0, 1, 2, 3]


def test_stage_report_is_independent_of_completion_order():
    """Workers finish in any order; the report lists skips in item order, then per class."""
    outs = [
        _dropped("sketch_test", 5, 1, left_out=True),
        _dropped("sketch_test", 4, 0),
        _dropped("sketch_test", 2, 1, left_out=True),
        _dropped("sketch_test", 1, 0),
    ]
    rng = np.random.default_rng(0)
    reports = [
        items_lib.stage_report(
            "sketch_test", [outs[i] for i in rng.permutation(4)], SETTINGS, [1, 0]
        )
        for _ in range(3)
    ]
    assert reports[0] == reports[1] == reports[2]
    assert [e["item"] for e in reports[0]] == ["item 1", "item 4", "test sketches of class b"]
    assert "2 sketches left out" in reports[0][-1]["reason"]
    shapes = items_lib.stage_report("shapes", [_dropped("shapes", 0, 1)], SETTINGS, [2, 0])
    assert [e["item"] for e in shapes] == ["item 0", "class b"]


def _render(data_dir: pathlib.Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "launch.render", "--data_dir", str(data_dir), *flags]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(HAS_BEAM, reason="checks the error shown when apache_beam is missing")
def test_render_beam_without_beam_is_a_one_line_error(tmp_path):
    p = _render(tmp_path, "--beam")
    assert p.returncode == 1
    assert "pip install 'sb3dr_jax[beam]'" in p.stderr and "Traceback" not in p.stderr
    assert not any(tmp_path.iterdir())  # failed before any work


@needs_beam
def test_render_beam_flags_reach_the_pipeline_options(tmp_path):
    """A typo in --beam_options is refused by the launcher before any work."""
    p = _render(tmp_path, "--beam", "--beam_workers=2", "--beam_options=--runer=DataflowRunner")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "beam.options (--beam_options): Beam does not know ['runer']" in p.stderr
    assert not any(tmp_path.iterdir())


@needs_beam
def test_bad_beam_settings_name_the_field():
    from sb3dr_jax.data.beam_build import BeamConfig

    with pytest.raises(ConfigError, match=r"beam.options.*runer"):
        BeamConfig(options="--runer=DataflowRunner").pipeline_options()
    with pytest.raises(ConfigError, match="beam.workers"):
        BeamConfig(workers=0).pipeline_options()
    opts = BeamConfig(workers=3).pipeline_options().get_all_options()
    assert opts["direct_num_workers"] == 3 and opts["runner"] == "DirectRunner"


def _bad_source(root: pathlib.Path) -> dict[str, str]:
    """A 3-class demo source with a truncated model, a class none of whose models load and an
    empty sketch file; returns the ids of the broken items."""
    from sb3dr_jax.data.cla import read_cla
    from sb3dr_jax.data.demo import build_demo

    # 3 classes of 4, 3 and 2 shapes; 3 train and 2 test sketches per class; 32 px sketches.
    build_demo(root, num_classes=3, max_shapes_per_class=4, imbalance_ratio=2.0, seed=1,
               sketches_per_class=(3, 2), sketch_size=32)  # fmt: skip
    models = read_cla(root / "classes" / "Model.cla").classes
    trunc = models[0].ids[0]
    text = (root / "models" / f"m{trunc}.off").read_text().splitlines()
    (root / "models" / f"m{trunc}.off").write_text("\n".join(text[: len(text) // 2]))
    for i in models[1].ids:  # every model of class 1 unreadable: its sketches are left out
        (root / "models" / f"m{i}.off").write_text("OFF\n3 1 0\n0 0 0\nnan 1 0\n0 1 1\n3 0 1 2\n")
    sketch = read_cla(root / "classes" / "Sketch_Train.cla").classes[2]
    (root / "sketches" / sketch.name / f"{sketch.ids[1]}.png").write_bytes(b"")
    return {"model": trunc, "lost_class": models[1].name, "sketch": sketch.ids[1]}


def _decoded(builder) -> dict[str, dict[str, dict]]:
    import tensorflow_datasets as tfds

    return {
        split: {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
        for split in builder.info.splits
    }


@needs_beam
@pytest.mark.slow
def test_beam_build_writes_the_same_records_and_report(tmp_path):
    """In-process and Beam (2 DirectRunner worker processes) builds of a source with bad items:
    every decoded record equal by key, and the same build report and metadata."""
    from sb3dr_jax.data.beam_build import BeamConfig

    bad = _bad_source(tmp_path / "src")
    builders = {}
    for name, beam in (("local", None), ("beam", BeamConfig(workers=2))):
        cfg = dataset_config("shared", smoke=True)
        cfg.root, cfg.data_dir = str(tmp_path / "src"), str(tmp_path / name)
        cfg.render.num_views = 4
        builders[name] = dataset_from_config(cfg, beam=beam)
    local, beam = (_decoded(builders[k]) for k in ("local", "beam"))
    assert {s: len(v) for s, v in beam.items()} == {s: len(v) for s, v in local.items()}
    for split, records in local.items():
        assert beam[split].keys() == records.keys()
        for key, ex in records.items():
            for field, value in ex.items():
                np.testing.assert_array_equal(beam[split][key][field], value, err_msg=field)
        assert sorted(ex["index"] for ex in records.values()) == list(range(len(records)))

    reports = [
        json.loads(pathlib.Path(builders[k].data_dir, "build_report.json").read_text())
        for k in ("local", "beam")
    ]
    assert reports[0] == reports[1]
    assert dict(builders["local"].info.metadata) == dict(builders["beam"].info.metadata)
    items = {(e["item"], e["stage"]) for e in reports[1]["skipped"]}
    assert (f"model {bad['model']}", "shapes") in items
    assert (f"class {bad['lost_class']}", "shapes") in items
    assert (f"train sketch {bad['sketch']}", "sketch_train") in items
    assert (f"test sketches of class {bad['lost_class']}", "sketch_test") in items
    assert not any(
        p.name.endswith(".beam") for p in pathlib.Path(builders["beam"].data_dir).parent.iterdir()
    )


def test_render_build_summary_removes_the_fixed_cost():
    """benchmarks/render_build.py: rates from the difference of two sizes, CPU projections."""
    sys.path.insert(0, str(REPO))
    from benchmarks.render_build import _summary

    # 10 s fixed + 0.5 s per mesh wall; 4 s fixed + 0.25 CPU s per mesh; two rounds per size.
    runs = [
        {"meshes": n, "build_s": 10 + 0.5 * n + d, "cpu_s": 4 + 0.25 * n}
        for n in (20, 100)
        for d in (-1.0, 1.0)
    ]
    s = _summary(runs)
    assert s["marginal_views_per_s"] == pytest.approx(12 / 0.5)
    assert s["fixed_s"] == pytest.approx(10.0)
    assert s["cpu_s_per_mesh"] == pytest.approx(0.25)
    assert s["views_per_s"] == pytest.approx(round(12 * 100 / 60, 1))
    assert s["projected_h_per_worker_core"]["1000000"] == pytest.approx(round(1e6 * 0.25 / 3600, 1))
