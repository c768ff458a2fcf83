"""EMPO without labels vs GRPO with labels on the built-in task: same warm start, same
prompts per step, three RL seeds each; held-out greedy accuracy against rollouts seen.

    python experiments/empo_grpo.py                  # runs what is missing, then writes
                                                     # docs/empo_grpo.png and _table.md

EMPO's rewards come from answer agreement within each group only; the gold answers are read
solely to report accuracy.
"""

from compare import Method, main

METHODS = [
    Method("GRPO (labels)", "grpo", "configs/quickstart.yaml"),
    Method("EMPO (no labels)", "empo", "configs/empo_quickstart.yaml"),
]

if __name__ == "__main__":
    main(METHODS, "empo_grpo", "built-in task", __doc__.splitlines()[0])
