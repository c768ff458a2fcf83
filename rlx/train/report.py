"""End-of-run reporting: the before/after table, the curves PNG, the metrics history."""

from __future__ import annotations

import json
from pathlib import Path


def load_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(summary: dict) -> str:
    def pct(x):
        return f"{100 * x:5.1f}%"

    rows = [("greedy", summary["heldout_accuracy_before"], summary["heldout_accuracy_after"]),
            ("sampled", summary["heldout_sampled_accuracy_before"], summary["heldout_sampled_accuracy_after"])]
    lines = [f"\nheld-out accuracy ({summary['heldout_size']} problems, never trained on)",
             "| decoding | before RL | after RL | change |", "|---|---|---|---|"]
    for name, b, a in rows:
        lines.append(f"| {name} | {pct(b)} | {pct(a)} | {100 * (a - b):+.1f} pts |")
    curve = [r for r in summary.get("reward_curve", []) if r is not None]
    if curve:
        marks = " ▁▂▃▄▅▆▇█"
        lo, hi = min(curve), max(curve)
        spark = "".join(marks[int((r - lo) / (hi - lo + 1e-9) * (len(marks) - 1))] for r in curve)
        lines.append(f"\nreward per step ({lo:.2f} .. {hi:.2f}): {spark}")
    lines.append(f"wall time: {summary['wall_seconds']:.0f} s")
    return "\n".join(lines)


def plot_curves(history: list[dict], before: dict, after: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [h.get("reward/mean") for h in history], label="reward")
    axes[0].plot(steps, [h.get("reward/accuracy") for h in history], label="train accuracy (sampled)")
    axes[0].set_title("reward per step")
    axes[0].legend()
    axes[1].plot(steps, [h.get("response/length_mean") for h in history])
    axes[1].set_title("mean response length (tokens)")
    evals = [(h["step"], h["eval/heldout_greedy"]) for h in history if "eval/heldout_greedy" in h]
    points = [(0, before["greedy"])] + evals + [(steps[-1] if steps else 0, after["greedy"])]
    axes[2].plot([p[0] for p in points], [p[1] for p in points], marker="o", label="greedy")
    axes[2].plot([0, steps[-1] if steps else 0], [before["sampled"], after["sampled"]], marker="s",
                 label="sampled")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("held-out accuracy")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("RL step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
