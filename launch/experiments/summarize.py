"""Mean and spread over seeds of runs' final metrics: `python -m launch.experiments.summarize`.

    python -m launch.experiments.summarize --out table.md \
        --run "SSLTKD=workdirs/qd90/s*/ssltkd" --run "no KD=workdirs/qd90/s*/no_kd"

    python -m launch.experiments.summarize --run "cgn=workdirs/cmp_s*/results.json#cgn"

Each `--run NAME=GLOB` names one row; the glob matches one workdir per seed (a name given
twice adds the second glob's workdirs to the row). A row's figures are the last value of each
metric in the workdirs' `metrics.jsonl` (the final evaluation), as mean +- standard deviation
over the seeds (population std, n = number of seeds). Teacher workdirs report
`eval/shapes/*`, students `eval/sketch_test/*` and `eval/sketch_val/*`. `PATH#METHOD` reads one
method's test figures from a `launch.compare` `results.json` instead (the same keys, so
baselines and thesis methods share the columns).
"""

from __future__ import annotations

import glob
import json
import os
import sys

from absl import app, flags

flags.DEFINE_multi_string("run", [], "NAME=GLOB of one row (repeatable).")
flags.DEFINE_list(
    "metrics",
    "eval/sketch_val/mAP,eval/sketch_test/NN,eval/sketch_test/mAP,eval/sketch_test/mAP_head,"
    "eval/sketch_test/mAP_medium,eval/sketch_test/mAP_tail",
    "Columns (metric keys of metrics.jsonl).",
)
flags.DEFINE_string("out", None, "Also write the table (markdown) and a JSON beside it.")


def compare_metrics(results_json: str, method: str) -> dict[str, float]:
    """One method's test figures from a `launch.compare` `results.json`, under the keys the
    final evaluation logs (`eval/sketch_test/<metric>`, `eval/sketch_test/mAP_<group>`).

    Raises:
      KeyError: the file has no results for `method` (naming the file and its methods).
    """
    with open(results_json) as f:
        results = json.load(f)["results"]
    if method not in results:
        raise KeyError(f"{results_json}: no results for {method!r}; it has {sorted(results)}")
    r = results[method]
    out = {f"eval/sketch_test/{k}": float(v) for k, v in r.items() if isinstance(v, int | float)}
    out.update({f"eval/sketch_test/mAP_{g}": float(v["mAP"]) for g, v in r["groups"].items()})
    return out


def final_metrics(workdir: str) -> dict[str, float]:
    """The last value of every metric in `<workdir>/metrics.jsonl` (or, for
    `<results.json>#<method>`, that method's figures: `compare_metrics`).

    Raises:
      FileNotFoundError: the workdir has no metrics.jsonl (the run did not finish).
    """
    if "#" in workdir:
        return compare_metrics(*workdir.split("#", 1))
    path = os.path.join(workdir, "metrics.jsonl")
    out: dict[str, float] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            out.update({k: v for k, v in row.items() if k != "step"})
    return out


def summarize(rows: dict[str, list[str]], metrics: list[str]) -> dict[str, dict]:
    """{row: {metric: {"mean", "std", "n", "values"}}} over each row's workdirs."""
    import numpy as np

    table = {}
    for name, workdirs in rows.items():
        finals = [final_metrics(w) for w in workdirs]
        table[name] = {"workdirs": workdirs}
        for m in metrics:
            vals = [f[m] for f in finals if m in f]
            if vals:
                table[name][m] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals)),
                    "n": len(vals),
                    "values": [float(v) for v in vals],
                }
    return table


def markdown(table: dict[str, dict], metrics: list[str]) -> str:
    """The table as markdown, `mean ± std (n)` per cell."""
    head = "| run | " + " | ".join(m.split("eval/")[-1] for m in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for name, row in table.items():
        cells = []
        for m in metrics:
            c = row.get(m)
            cells.append(f"{c['mean']:.3f} ± {c['std']:.3f} ({c['n']})" if c else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_from_specs(specs: list[str]) -> dict[str, list[str]]:
    """`NAME=GLOB[#METHOD]` specs -> {row name: its workdirs}, a repeated name accumulating.

    Raises:
      ValueError: a glob matches nothing (naming the spec).
    """
    rows: dict[str, list[str]] = {}
    for spec in specs:
        name, _, pattern = spec.partition("=")
        path, hash_, method = pattern.partition("#")
        found = [f + hash_ + method for f in sorted(glob.glob(path))]
        if not found:
            raise ValueError(f"--run {spec!r}: no workdir matches {path!r}")
        rows.setdefault(name, []).extend(found)
    return rows


def main(argv):
    del argv
    try:
        rows = rows_from_specs(flags.FLAGS.run)
    except ValueError as e:
        sys.exit(f"error: {e}")
    table = summarize(rows, flags.FLAGS.metrics)
    md = markdown(table, flags.FLAGS.metrics)
    print(md)
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "w") as f:
            f.write(md + "\n")
        with open(os.path.splitext(flags.FLAGS.out)[0] + ".json", "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    app.run(main)
