"""tcmalloc for CPU runs: launchers re-execute themselves with it preloaded.

Why: XLA:CPU allocates every step's temporary buffer afresh (95 MB for the resnet_tiny teacher
step at batch 16). glibc serves requests above 32 MB with `mmap` and returns them with
`munmap`, so every step faults the whole buffer in again, page by page: 24k page faults and a
third of a core in the kernel per step on 2 cores. tcmalloc keeps freed pages mapped and hands
them out again: no faults, and the step takes ~24% less time (benchmarks/README.md). glibc cannot
be told otherwise from inside the process (its mmap threshold tops out at 32 MB), and another
allocator only replaces `malloc` when it is loaded before everything else: hence `LD_PRELOAD`
and a re-exec, as PyTorch's `torch.backends.xeon.run_cpu` launcher does.

Without tcmalloc the launchers fall back to glibc with transparent huge pages for its mapped
blocks (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc >= 2.35, when the kernel's THP mode is
`always` or `madvise`): 512x fewer faults, though the kernel still zeroes every page; the step
takes ~11% less time than on plain glibc, against tcmalloc's ~24%. `SB3DR_TCMALLOC=0` keeps the system allocator as it
is; `SB3DR_TCMALLOC=/path/to/libtcmalloc.so` picks the library. Debian/Ubuntu:
`apt-get install libtcmalloc-minimal4`.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping

SWITCH = "SB3DR_TCMALLOC"
HUGETLB = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"
_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
_NAMES = (
    "libtcmalloc_minimal.so.4",
    "libtcmalloc.so.4",
    "libtcmalloc_minimal.so",
    "libtcmalloc.so",
)


def find_tcmalloc(env: Mapping[str, str] = os.environ) -> str | None:
    """The tcmalloc library to preload, or None (absent, or switched off with SB3DR_TCMALLOC=0).

    Args:
      env: the environment to read SB3DR_TCMALLOC from.

    Returns:
      A path (or a soname the dynamic loader finds), or None.

    Raises:
      FileNotFoundError: SB3DR_TCMALLOC names a file that does not exist.
    """
    choice = env.get(SWITCH, "")
    if choice == "0":
        return None
    if choice:
        if not os.path.isfile(choice):
            raise FileNotFoundError(f"{SWITCH}={choice}: no such file (0 keeps the system malloc)")
        return choice
    for d in _DIRS:
        for name in _NAMES:
            if os.path.isfile(path := os.path.join(d, name)):
                return path
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def huge_pages_available() -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks (`always`/`madvise`)."""
    try:
        with open(_THP) as f:
            mode = f.read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def preload_env(env: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The environment to re-execute with, or None when there is nothing to do.

    Nothing to do: not Linux, switched off, already set up (tcmalloc in LD_PRELOAD or the huge
    page tunable in GLIBC_TUNABLES, which also ends a re-exec loop if the loader could not load
    the library), or neither tcmalloc nor huge pages available.

    Args:
      env: the current environment.

    Returns:
      A copy of `env` with tcmalloc first in LD_PRELOAD, or else with glibc's huge page tunable
      added to GLIBC_TUNABLES; or None.
    """
    if not sys.platform.startswith("linux") or env.get(SWITCH) == "0":
        return None
    if "tcmalloc" in env.get("LD_PRELOAD", "") or HUGETLB in env.get("GLIBC_TUNABLES", ""):
        return None
    out = dict(env)
    lib = find_tcmalloc(env)
    if lib is not None:
        out["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
        # tcmalloc notes every allocation above 1 GiB on stderr; big eval tables are not news.
        out.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
        return out
    if not huge_pages_available():
        return None
    out["GLIBC_TUNABLES"] = ":".join(p for p in (env.get("GLIBC_TUNABLES", ""), HUGETLB) if p)
    return out


def active() -> str:
    """This process's allocator: "tcmalloc", "glibc+hugepages" or "system"."""
    try:
        with open("/proc/self/maps") as f:
            if "tcmalloc" in f.read():
                return "tcmalloc"
    except OSError:  # not Linux
        return "system"
    return "glibc+hugepages" if HUGETLB in os.environ.get("GLIBC_TUNABLES", "") else "system"


def reexec_with_tcmalloc() -> None:
    """Re-executes this Python process with tcmalloc preloaded, or else with glibc's huge page
    tunable (see the module docstring).

    Returns (and the process goes on as it is) when that is done already, switched off, or
    neither is available. Call it first thing in a `__main__` block: the process starts over
    with the same command line and environment, plus LD_PRELOAD (or GLIBC_TUNABLES).
    """
    if active() != "system":
        return
    env = preload_env(os.environ)
    if env is None or "tcmalloc" not in env.get("LD_PRELOAD", ""):
        if os.environ.get(SWITCH) != "0" and sys.platform.startswith("linux"):
            print("sb3dr_jax: tcmalloc not found, so XLA:CPU steps fault their temporary "
                  "buffers in again every step (~30% slower; glibc's huge pages, when the kernel "
                  "has them, win back part of it): apt-get install libtcmalloc-minimal4, or "
                  f"set {SWITCH}=0 to silence this", file=sys.stderr)  # fmt: skip
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
