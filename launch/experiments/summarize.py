"""Mean and spread over seeds of runs' final metrics: `python -m launch.experiments.summarize`.

    python -m launch.experiments.summarize --out table.md \
        --run "SSLTKD=workdirs/qd90/s*/ssltkd" --run "no KD=workdirs/qd90/s*/no_kd"

Each `--run NAME=GLOB` names one row; the glob matches one workdir per seed. A row's figures are
the last value of each metric in the workdirs' `metrics.jsonl` (the final evaluation), as
mean +- standard deviation over the seeds (population std, n = number of seeds). Teacher
workdirs report `eval/shapes/*`, students `eval/sketch_test/*` and `eval/sketch_val/*`.
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


def final_metrics(workdir: str) -> dict[str, float]:
    """The last value of every metric in `<workdir>/metrics.jsonl`.

    Raises:
      FileNotFoundError: the workdir has no metrics.jsonl (the run did not finish).
    """
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


def main(argv):
    del argv
    rows = {}
    for spec in flags.FLAGS.run:
        name, _, pattern = spec.partition("=")
        found = sorted(glob.glob(pattern))
        if not found:
            sys.exit(f"error: --run {spec!r}: no workdir matches {pattern!r}")
        rows[name] = found
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
