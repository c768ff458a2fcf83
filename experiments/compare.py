"""Shared machinery for the method comparisons in experiments/: run each (method, seed) once,
read the held-out accuracy curves back, and write a plot and a markdown table.

Every run lands in runs/cmp-<key>-s<seed>/ and is skipped when its summary.json exists, so
comparisons that share a method (GRPO) share its runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Method:
    label: str
    key: str  # run directories are runs/cmp-<key>-s<seed>
    config: str
    overrides: list[str] = field(default_factory=list)


def run_dir(method: Method, seed: int) -> Path:
    return ROOT / "runs" / f"cmp-{method.key}-s{seed}"


def curve(path: Path) -> tuple[list[float], list[float]]:
    """(cumulative rollouts, held-out greedy accuracy), starting from the warm start."""
    before = json.loads((path / "eval_before.json").read_text())["greedy"]
    seen, xs, ys = 0.0, [0.0], [before]
    for line in (path / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        seen += m.get("rollout/sequences", 0.0)
        if "eval/heldout_greedy" in m:
            xs.append(seen)
            ys.append(m["eval/heldout_greedy"])
    return xs, ys


def run_missing(methods: list[Method], seeds: list[int], steps: int) -> None:
    from rlx.config import load_config
    from rlx.train import rl

    for seed in seeds:
        for method in methods:
            path = run_dir(method, seed)
            if (path / "summary.json").exists():
                continue
            cfg = load_config(ROOT / method.config, [f"run.name={path.name}", f"trainer.seed={seed}",
                                                     f"trainer.steps={steps}", "trainer.eval_every=10",
                                                     f"run.out_dir={ROOT / 'runs'}", *method.overrides])
            rl.run(cfg)


def report(methods: list[Method], seeds: list[int], stem: str, title: str) -> str:
    """Write docs/<stem>.png and docs/<stem>_table.md; return the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = []
    for i, method in enumerate(methods):
        finals, sampled, seen = [], [], []
        for seed in seeds:
            path = run_dir(method, seed)
            xs, ys = curve(path)
            ax.plot(xs, ys, color=f"C{i}", alpha=0.8, marker="o", ms=3,
                    label=method.label if seed == seeds[0] else None)
            summary = json.loads((path / "summary.json").read_text())
            finals.append(summary["heldout_accuracy_after"])
            sampled.append(summary["heldout_sampled_accuracy_after"])
            seen.append(xs[-1])
        before = json.loads((run_dir(method, seeds[0]) / "eval_before.json").read_text())
        rows.append((method.label, before["greedy"], finals, sampled, seen))
    ax.set_xlabel("rollouts seen (sequences sampled)")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"{title}, {len(seeds)} seeds each")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / f"{stem}.png", dpi=100)

    def stat(xs):
        return f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs):.1f}"

    lines = ["| method | before RL (greedy) | after RL, greedy | after RL, sampled | rollouts seen | per seed (greedy) |",
             "|---|---|---|---|---|---|"]
    for label, before, finals, sampled, seen in rows:
        lines.append(f"| {label} | {100 * before:.1f} | {stat(finals)} | {stat(sampled)} | "
                     f"{np.mean(seen):.0f} | {', '.join(f'{100 * f:.1f}' for f in finals)} |")
    table = "\n".join(lines)
    (ROOT / "docs" / f"{stem}_table.md").write_text(table + "\n")
    return table


def main(methods: list[Method], stem: str, title: str, description: str, argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    run_missing(methods, args.seeds, args.steps)
    print(report(methods, args.seeds, stem, title))
