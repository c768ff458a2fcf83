"""PRIME vs GRPO vs outcome-only RLOO on the built-in task: same warm start, same prompts per
step, three RL seeds each; held-out greedy accuracy against rollouts seen.

    python experiments/prime_grpo_rloo.py            # runs what is missing, then writes
                                                     # docs/experiments.md and docs/prime_grpo_rloo.png

Each run lands in runs/cmp-<method>-s<seed>/ and is skipped when its summary.json exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlx.config import load_config  # noqa: E402

METHODS = {
    "GRPO": ("configs/quickstart.yaml", []),
    "RLOO (outcome only)": ("configs/quickstart.yaml", ["algo.advantage=rloo"]),
    "PRIME": ("configs/prime_quickstart.yaml", []),
}


def run_name(method: str, seed: int) -> str:
    return f"cmp-{method.split()[0].lower()}-s{seed}"


def curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(cumulative rollouts, held-out greedy accuracy), starting from the warm start."""
    before = json.loads((run_dir / "eval_before.json").read_text())["greedy"]
    seen, xs, ys = 0.0, [0.0], [before]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        seen += m.get("rollout/sequences", 0.0)
        if "eval/heldout_greedy" in m:
            xs.append(seen)
            ys.append(m["eval/heldout_greedy"])
    return xs, ys


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    from rlx.train import rl

    for seed in args.seeds:
        for method, (config, extra) in METHODS.items():
            name = run_name(method, seed)
            if (ROOT / "runs" / name / "summary.json").exists():
                continue
            cfg = load_config(ROOT / config, [f"run.name={name}", f"trainer.seed={seed}",
                                              f"trainer.steps={args.steps}", "trainer.eval_every=10",
                                              f"run.out_dir={ROOT / 'runs'}", *extra])
            rl.run(cfg)
    report(args.seeds)


def report(seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = []
    for (method, _), color in zip(METHODS.items(), ("C0", "C1", "C2")):
        finals, sampled, seen = [], [], []
        for seed in seeds:
            run_dir = ROOT / "runs" / run_name(method, seed)
            xs, ys = curve(run_dir)
            ax.plot(xs, ys, color=color, alpha=0.8, marker="o", ms=3,
                    label=method if seed == seeds[0] else None)
            summary = json.loads((run_dir / "summary.json").read_text())
            finals.append(summary["heldout_accuracy_after"])
            sampled.append(summary["heldout_sampled_accuracy_after"])
            seen.append(xs[-1])
        before = json.loads((ROOT / "runs" / run_name(method, seeds[0]) / "eval_before.json").read_text())
        rows.append((method, before["greedy"], finals, sampled, seen))
    ax.set_xlabel("rollouts seen (sequences sampled)")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"built-in task, {len(seeds)} seeds each")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "prime_grpo_rloo.png", dpi=100)

    def stat(xs):
        return f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs):.1f}"

    lines = ["| method | before RL (greedy) | after RL, greedy | after RL, sampled | rollouts seen | per seed (greedy) |",
             "|---|---|---|---|---|---|"]
    for method, before, finals, sampled, seen in rows:
        lines.append(f"| {method} | {100 * before:.1f} | {stat(finals)} | {stat(sampled)} | "
                     f"{np.mean(seen):.0f} | {', '.join(f'{100 * f:.1f}' for f in finals)} |")
    table = "\n".join(lines)
    print(table)
    (ROOT / "docs" / "prime_grpo_rloo_table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
