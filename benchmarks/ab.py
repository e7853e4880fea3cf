"""Two variants of the JAX teacher step timed side by side: the A/B runs of benchmarks/README.

    python benchmarks/ab.py --preset resnet18 --batch 8 --rounds 16 \
        --a "SB3DR_ONEDNN_THREADS=1" --a_config "model.view_chunk=32" [--b ...] [--out f.json]

Each variant's step (the `launch.pretrain` step as `torch_reference.py` builds it: the
backbone's CPU config, fixed random views) is built and warmed up once in its own process, with
its own environment variables (`--a` / `--b`: "NAME=value NAME2=value") and config overrides
(`--a_config` / `--b_config`: "key.path=value,key2=value"). The runner then asks them in turn
for ~1 s samples, the first one alternating, as the PyTorch reference does; a slow spell of
a shared machine hits both samples of a round, and the median of the per-round ratios leaves
it out. Environment variables that are read at start-up (XLA_FLAGS, SB3DR_ONEDNN_*,
SB3DR_TCMALLOC, OMP_*) can only be compared this way, not within one process.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import torch_reference as tr  # noqa: E402


def parse_env(text: str) -> dict[str, str]:
    """Parses a variant's environment variables.

    Args:
      text: "NAME=value NAME2=value" (whitespace-separated; a value may contain "=").

    Returns:
      {NAME: value}.

    Raises:
      ValueError: an entry is not NAME=value; the message names it.
    """
    out = {}
    for item in text.split():
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--a/--b: expected NAME=value, got {item!r}")
        out[name] = value
    return out


def parse_config(text: str) -> dict:
    """Parses a variant's config overrides.

    Args:
      text: "model.view_chunk=32,ssl.views_per_branch=2" (comma-separated).

    Returns:
      {flattened key: value}, values as Python literals where they parse as one (32, 0.5,
      True), else strings.

    Raises:
      ValueError: an entry is not key=value; the message names it.
    """
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--a_config/--b_config: expected key.path=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run_ab(preset: str, batch: int, rounds: int, a: tuple[dict, dict], b: tuple[dict, dict],
           k: int = 4, res: int = 64, sample_s: float = 1.0, gap_s: float = 0.2) -> dict:  # fmt: skip
    """Times variant A against variant B, each (env, config overrides), in live processes.

    Args:
      preset, batch, k, res: the teacher step (backbone, global batch, views per branch, px).
      rounds: alternating rounds, one ~`sample_s` sample of each variant per round.
      a, b: (environment variables, config overrides) of each variant.
      sample_s, gap_s: length of one sample; idle time before each.

    Returns:
      {"a": {env, config, allocator, s_per_step}, "b": {...}, "ratio_a_over_b": median of the per-round
      step-time ratios (< 1: A is faster), "ratio_quartiles", "ratios_per_round", and the case}.
    """
    for _, cfg in (a, b):  # a bad key fails here, before two steps compile
        tr.teacher_config(preset, batch, k, "auto", "float32", cfg)
    base = dict(preset=preset, batch=batch, k=k, res=res, dtype="float32", torch_device=None)
    cases = {n: base | {"config": cfg} for n, (_, cfg) in zip("ab", (a, b))}
    starts = {n: (lambda n=n, env=env: tr._StepServer("jax", cases[n], env))
              for n, (env, _) in zip("ab", (a, b))}  # fmt: skip
    times, servers = tr.alternate(starts, rounds, sample_s, gap_s)
    ratio, quartiles, per_round = tr.per_round_ratios(times["a"], times["b"])
    return {
        "case": {"preset": preset, "batch": batch, "views_per_shape": 2 * k, "res": res},
        **{
            n: {
                "env": env,
                "config": cfg,
                "allocator": servers[n].info.get("allocator"),
                "s_per_step": round(float(np.median(times[n])), 4),
            }
            for n, (env, cfg) in zip("ab", (a, b))
        },
        "ratio_a_over_b": ratio,
        "ratio_quartiles": quartiles,
        "ratios_per_round": per_round,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> dict:
    """The command line above; prints the JSON and writes it to --out when given."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="resnet_tiny", choices=sorted(tr.PRESETS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--views_per_branch", type=int, default=4)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--rounds", type=int, default=16)
    for n in "ab":
        p.add_argument(f"--{n}", default="", help="environment: NAME=value NAME2=value")
        p.add_argument(f"--{n}_config", default="", help="config: key.path=value,key2=value")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    try:
        a = (parse_env(args.a), parse_config(args.a_config))
        b = (parse_env(args.b), parse_config(args.b_config))
    except ValueError as e:
        p.error(str(e))
    result = run_ab(args.preset, args.batch, args.rounds, a, b, args.views_per_branch, args.res)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
