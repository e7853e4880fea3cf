"""The tcmalloc preload of the launchers (`sb3dr_jax/allocator.py`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from sb3dr_jax import allocator

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")


@linux
def test_preload_env_puts_tcmalloc_first(tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    env = allocator.preload_env({allocator.SWITCH: str(lib), "LD_PRELOAD": "/x/libother.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/x/libother.so"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert allocator.preload_env({allocator.SWITCH: str(lib)})["LD_PRELOAD"] == str(lib)


@linux
def test_preload_env_nothing_to_do(tmp_path, monkeypatch):
    # Already preloaded (this also ends a re-exec loop), or switched off.
    assert allocator.preload_env({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}) is None
    assert allocator.preload_env({allocator.SWITCH: "0"}) is None
    assert allocator.preload_env({"GLIBC_TUNABLES": allocator.HUGETLB}) is None
    # Not installed anywhere, and no huge pages either.
    monkeypatch.setattr(allocator, "_DIRS", (str(tmp_path),))
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(allocator, "huge_pages_available", lambda: False)
    assert allocator.find_tcmalloc({}) is None and allocator.preload_env({}) is None


@linux
def test_without_tcmalloc_glibc_gets_huge_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator, "_DIRS", (str(tmp_path),))
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(allocator, "huge_pages_available", lambda: True)
    env = allocator.preload_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{allocator.HUGETLB}"
    assert "LD_PRELOAD" not in env
    assert allocator.preload_env({allocator.SWITCH: "0"}) is None  # off means as it is
    monkeypatch.setenv("GLIBC_TUNABLES", allocator.HUGETLB)
    assert allocator.active() in ("glibc+hugepages", "tcmalloc")  # tcmalloc if this one has it


def test_huge_page_modes(tmp_path, monkeypatch):
    thp = tmp_path / "enabled"
    for text, ok in [("always [madvise] never", True), ("[always] madvise never", True),
                     ("always madvise [never]", False)]:  # fmt: skip
        thp.write_text(text)
        monkeypatch.setattr(allocator, "_THP", str(thp))
        assert allocator.huge_pages_available() is ok
    monkeypatch.setattr(allocator, "_THP", str(tmp_path / "absent"))
    assert not allocator.huge_pages_available()


def test_a_missing_library_is_named():
    with pytest.raises(FileNotFoundError, match=f"{allocator.SWITCH}=/no/such/libtcmalloc.so"):
        allocator.find_tcmalloc({allocator.SWITCH: "/no/such/libtcmalloc.so"})


def _reexec(env: dict) -> subprocess.CompletedProcess:
    code = (
        "import sys; from sb3dr_jax import allocator; allocator.reexec_with_tcmalloc(); "
        "print(allocator.active(), sys.argv[1:])"
    )
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "LD_PRELOAD"}
    return subprocess.run([sys.executable, "-c", code, "a", "--b=1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip


@linux
def test_reexec_runs_the_same_command_on_tcmalloc():
    if allocator.find_tcmalloc({}) is None:
        pytest.skip("tcmalloc is not installed: apt-get install libtcmalloc-minimal4")
    p = _reexec({allocator.SWITCH: ""})
    assert p.stdout.split("\n")[0] == "tcmalloc ['a', '--b=1']", p.stderr
    p = _reexec({allocator.SWITCH: "0"})  # switched off: the same process, silently
    assert p.stdout.split("\n")[0] == "system ['a', '--b=1']" and "tcmalloc" not in p.stderr
