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
    # The same, training only on prompts whose 7 answers are not too spread: H_g <= 1 nat
    # (all 7 different is log 7 = 1.95), refilled from up to 3 more rounds of prompts.
    Method("EMPO, H_g <= 1.0 (no labels)", "empo-band", "configs/empo_quickstart.yaml",
           ["rewards.empo.entropy_band=[0.0, 1.0]"]),
]

if __name__ == "__main__":
    main(METHODS, "empo_grpo", "built-in task", __doc__.splitlines()[0])
