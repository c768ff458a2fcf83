"""Temperature by entropy on the quickstart model: GRPO with a fixed rollout temperature of 1
against the same run with `engine.temperature_control` steering the mean token entropy of the
rollouts towards 0.3 (AceReason-Nemotron 1.1), at the default rate 0.1 and at 0.5.

    python experiments/temperature_control.py        # runs what is missing, then writes
                                                     # docs/temperature_control.png and _table.md
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from compare import ROOT, Method, run_dir, run_missing

TARGET = 0.3
METHODS = [
    Method("fixed T = 1", "fixedT", "configs/quickstart.yaml"),
    Method(f"controller, target {TARGET}", "entropyT", "configs/quickstart.yaml",
           ["engine.temperature_control=true", f"engine.target_entropy={TARGET}"]),
    Method(f"controller, target {TARGET}, rate 0.5", "entropyT05", "configs/quickstart.yaml",
           ["engine.temperature_control=true", f"engine.target_entropy={TARGET}",
            "engine.temperature_rate=0.5"]),
]


def series(path, key):
    return [json.loads(line)[key] for line in (path / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    run_missing(METHODS, [args.seed], args.steps)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8))
    lines = ["| run | entropy, steps 1-5 | entropy, last 10 steps | temperature, last 10 steps | "
             "held-out greedy after | held-out sampled after |", "|---|---|---|---|---|---|"]
    for i, method in enumerate(METHODS):
        path = run_dir(method, args.seed)
        h, t = series(path, "rollout/entropy"), series(path, "rollout/temperature")
        steps = np.arange(1, len(h) + 1)
        ax_h.plot(steps, h, color=f"C{i}", label=method.label)
        ax_t.plot(steps, t, color=f"C{i}", label=method.label)
        summary = json.loads((path / "summary.json").read_text())
        lines.append(f"| {method.label} | {np.mean(h[:5]):.3f} | {np.mean(h[-10:]):.3f} ± {np.std(h[-10:]):.3f} | "
                     f"{np.mean(t[-10:]):.2f} | {100 * summary['heldout_accuracy_after']:.1f} | "
                     f"{100 * summary['heldout_sampled_accuracy_after']:.1f} |")
    ax_h.axhline(TARGET, color="grey", ls="--", lw=1, label="target")
    ax_h.set(xlabel="RL step", ylabel="mean token entropy of softmax(z/T) on rollouts")
    ax_t.set(xlabel="RL step", ylabel="rollout temperature T")
    ax_h.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "temperature_control.png", dpi=100)
    table = "\n".join(lines)
    (ROOT / "docs" / "temperature_control_table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
