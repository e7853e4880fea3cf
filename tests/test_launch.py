"""End-to-end smoke tests of every entry point, run as a user would (subprocesses)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sb3dr_jax import allocator

REPO = pathlib.Path(__file__).resolve().parents[1]
_MALLOC = (
    "tcmalloc"
    if allocator.find_tcmalloc()
    else "glibc+hugepages"
    if allocator.huge_pages_available()
    else "system"
)


def _run(args, cwd, timeout=600, **env_vars):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env_vars,
    }
    env = {k: v for k, v in env.items() if v is not None}
    p = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p


@pytest.mark.slow
def test_pretrain_distill_evaluate_chain(tmp_path, smoke_data_dir):
    data = f"--config.dataset.data_dir={smoke_data_dir}"
    cfg = lambda name: f"--config={REPO}/sb3dr_jax/configs/{name}.py:smoke"
    p = _run(["launch.pretrain", cfg("pretrain"), data, "--workdir=wd/pretrain"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{_MALLOC} malloc" in p.stdout  # the launcher re-executed itself on tcmalloc
    assert (tmp_path / "wd/pretrain/checkpoints").is_dir()
    lines = [
        json.loads(x) for x in (tmp_path / "wd/pretrain/metrics.jsonl").read_text().splitlines()
    ]
    assert any("train/loss" in x for x in lines) and any("eval/shapes/knn_acc" in x for x in lines)
    p = _run(
        [
            "launch.distill",
            cfg("distill"),
            "--config.teacher_workdir=wd/pretrain",
            "--workdir=wd/distill",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "wd/distill/export/index.npz").exists()
    p = _run(
        [
            "launch.evaluate",
            f"--config={REPO}/sb3dr_jax/configs/evaluate.py:smoke",
            "--run=wd/distill",
            "--output_dir=wd/eval",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| distill |" in p.stdout and "mAP" in p.stdout
    metrics = json.loads((tmp_path / "wd/eval/metrics.json").read_text())
    assert 0.0 <= metrics["distill"]["mAP"] <= 1.0
    assert (tmp_path / "wd/eval/pr_curve.png").stat().st_size > 1000


def _fails_fast(args, cwd):
    """A launcher run expected to stop before any training (no tcmalloc re-exec: faster)."""
    # TF_CPP_MIN_LOG_LEVEL unset, as on a fresh shell: the launcher keeps TF's notices away.
    return _run(args, cwd, SB3DR_TCMALLOC="0", TF_CPP_MIN_LOG_LEVEL=None)


def _one_error_line(p) -> str:
    """The launcher failed with exactly one `error:` line on stderr and no traceback."""
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    assert "InitializeLog" not in p.stderr and "cpu_feature_guard" not in p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """A folder with the inputs of the common mistakes: a distill run's config.json where a
    teacher is expected, a dataset whose Model.cla is broken."""
    root = tmp_path_factory.mktemp("mistakes")
    (root / "a_distill_run").mkdir()
    from sb3dr_jax.configs import distill

    (root / "a_distill_run" / "config.json").write_text(distill.get_config("smoke").to_json())
    (root / "broken" / "classes").mkdir(parents=True)
    (root / "broken" / "classes" / "Model.cla").write_text("PSB 1\n1 2\n\nchair 0 1\n7\n")
    (root / "a_file").write_text("not a folder\n")
    return root


def _cfg(name: str, args: str = "smoke") -> str:
    return f"--config={REPO}/sb3dr_jax/configs/{name}.py:{args}"


def test_distill_without_teacher_says_what_to_run(mistakes):
    p = _fails_fast(
        ["launch.distill", _cfg("distill"), "--config.teacher_workdir=nowhere"], mistakes
    )
    line = _one_error_line(p)
    assert "python -m launch.pretrain" in line and str(mistakes / "nowhere") in line
    assert f"teacher: {mistakes / 'nowhere'}" in p.stdout  # which teacher it tried


@pytest.mark.parametrize(
    "args, says",
    [
        # a distill run given as the teacher (was a 49-line AttributeError: 'ssl')
        (
            ["launch.distill", _cfg("distill"), "--config.teacher_workdir=a_distill_run"],
            "holds a distill run, not a trained teacher",
        ),
        # an unknown method name (was silently BYOL): the field and the choices
        (
            ["launch.pretrain", _cfg("pretrain", "smoke,method=byoll")],
            "ssl.method: unknown 'byoll'; choose from ['byol', 'per_view', 'simsiam']",
        ),
        # an unknown dataset name: the choices include the README's tub16 and qd90
        (["launch.pretrain", _cfg("pretrain", "smoke,dataset=tub17")], "'qd90', 'shared'"),
        # a broken model class file (ClaError): names the file and line
        (
            [
                "launch.pretrain",
                _cfg("pretrain"),
                "--config.dataset.name=shared",
                "--config.dataset.root=broken",
            ],
            "Model.cla:2: header declares 2 items",
        ),
        # a bad config value
        (["launch.evaluate", _cfg("evaluate"), "--config.parallel=nope"], "parallel: unknown"),
        # an evaluate run folder without an export: the absolute path looked at
        (["launch.evaluate", _cfg("evaluate"), "--run=nowhere"], "nowhere/export/student.json"),
        # a file where the output folder should be (was a NotADirectoryError traceback)
        (["launch.compare", _cfg("compare"), "--workdir=a_file"], "a_file is a file, not a folder"),
    ],
)
def test_launcher_mistakes_give_one_clear_line(mistakes, args, says):
    given = "evaluate" in args[0] or any(a.startswith("--workdir") for a in args)
    p = _fails_fast(args if given else [*args, "--workdir=wd"], mistakes)
    assert says in _one_error_line(p)


def test_help_lists_the_flags(mistakes):
    for launcher, flag in [
        ("launch.pretrain", "--workdir"),
        ("launch.distill", "--workdir"),
        ("launch.evaluate", "--run"),
    ]:
        out = _fails_fast([launcher, "--help"], mistakes).stdout
        assert flag in out and "debug" in out, (launcher, out[-2000:])
    # evaluate has no --workdir (it reads runs): a second meaning of one flag name is refused
    p = _fails_fast(["launch.evaluate", "--workdir=wd/distill"], mistakes)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "workdir" in p.stderr


def test_expected_errors_in_a_run_are_one_line(capsys):
    """NonFiniteError (the NaN guard) and DataError subclasses: one line, exit status 1."""
    from absl import flags

    from launch import common
    from sb3dr_jax.data.errors import ClaError
    from sb3dr_jax.train import NonFiniteError

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["test"])
    for err in (NonFiniteError("non-finite train/loss at step 4"), ClaError("a.cla:3", "bad")):

        def boom(argv, err=err):
            raise err

        with pytest.raises(SystemExit) as e:
            common.main(boom)([])
        assert e.value.code == 1
        assert capsys.readouterr().err.startswith(f"error: {err}")

    def bug(argv):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        common.main(bug)([])
    flags.FLAGS.debug = True  # --debug: the expected error keeps its traceback too
    try:
        with pytest.raises(ClaError):
            common.main(boom)([])
    finally:
        flags.FLAGS.debug = False


def test_query_api_names_the_absolute_export_path(tmp_path, monkeypatch):
    from sb3dr_jax.serving.query import QueryEngine

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        QueryEngine.from_export()  # the default: workdirs/distill/export under this folder
    assert str(tmp_path / "workdirs" / "distill" / "export" / "student.json") in str(e.value)
    assert "relative path is taken from the current folder" in str(e.value)


def test_render_writes_a_contact_sheet(tmp_path, smoke_data_dir):
    p = _run(
        [
            "launch.render",
            f"--config={REPO}/sb3dr_jax/configs/render.py:smoke",
            f"--data_dir={smoke_data_dir}",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    sheet = pathlib.Path(p.stdout.strip().splitlines()[-1].split("contact sheet: ")[1])
    from PIL import Image

    img = Image.open(sheet)
    assert img.size[0] > 300 and img.size[1] > 100
