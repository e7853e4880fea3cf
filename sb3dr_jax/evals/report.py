"""Reports: a markdown table, metrics.json, a per-class CSV and a PR-curve PNG."""

from __future__ import annotations

import csv
import json
import os

COLUMNS = ("NN", "FT", "ST", "E", "DCG", "mAP")


def markdown_table(results: dict[str, dict]) -> str:
    """Rows = methods, columns = SHREC metrics plus the mAP of each class-frequency group.

    Args:
      results: {method name: evaluate_retrieval summary}.

    Returns:
      A markdown table.
    """
    groups = [
        g
        for g in ("head", "medium", "tail")
        if any(g in r.get("groups", {}) for r in results.values())
    ]
    head = [
        "method",
        *COLUMNS,
        "mAP (shrec_matlab)",
        "mAP (pr_mean)",
        *(f"mAP {g}" for g in groups),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name] + [f"{r[c]:.3f}" for c in COLUMNS]
        cells += [f"{r['mAP_shrec_matlab']:.3f}", f"{r['mAP_pr_mean']:.3f}"]
        cells += [
            f"{r['groups'][g]['mAP']:.3f}" if g in r.get("groups", {}) else "-" for g in groups
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_metrics_json(path: str, results: dict[str, dict]) -> None:
    """All results, per-class and per-group included, as JSON."""
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


def write_per_class_csv(path: str, results: dict[str, dict]) -> None:
    """One row per (method, class) with every SHREC metric and the query count."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "class", "num_queries", *COLUMNS])
        for name, r in results.items():
            for cls, m in r.get("per_class", {}).items():
                w.writerow([name, cls, m["num_queries"], *(f"{m[c]:.4f}" for c in COLUMNS)])


def line_styles(n: int) -> list[dict]:
    """`n` distinguishable line styles: ten colours, then the next line style and marker.

    Args:
      n: number of lines.

    Returns:
      `n` dicts of matplotlib `plot` keyword arguments, no two alike.
    """
    colours = [f"C{i}" for i in range(10)]  # matplotlib's default cycle has ten colours
    dashes, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    return [
        dict(
            color=colours[i % 10],
            linestyle=dashes[(i // 10) % 4],
            marker=markers[(i // 10) % 4],
            # past 40 lines the width still tells them apart
            linewidth=1.5 + 0.5 * (i // 40),
        )
        for i in range(n)
    ]


def plot_pr_curves(path: str, results: dict[str, dict]) -> None:
    """Precision-recall curves (20-point interpolated), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    recall = [j / 20 for j in range(1, 21)]
    for (name, r), style in zip(results.items(), line_styles(len(results)), strict=True):
        ax.plot(recall, r["pr_curve"], markersize=3, label=f"{name} (mAP {r['mAP']:.3f})", **style)
    ax.set(
        xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_all(output_dir: str, results: dict[str, dict]) -> dict[str, str]:
    """Writes metrics.json, per_class.csv, pr_curve.png and table.md into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        k: os.path.join(output_dir, k)
        for k in ("metrics.json", "per_class.csv", "pr_curve.png", "table.md")
    }
    write_metrics_json(paths["metrics.json"], results)
    write_per_class_csv(paths["per_class.csv"], results)
    plot_pr_curves(paths["pr_curve.png"], results)
    with open(paths["table.md"], "w") as f:
        f.write(markdown_table(results) + "\n")
    return paths
