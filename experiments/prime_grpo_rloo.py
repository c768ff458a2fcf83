"""PRIME vs GRPO vs outcome-only RLOO on the built-in task: same warm start, same prompts per
step, three RL seeds each; held-out greedy accuracy against rollouts seen.

    python experiments/prime_grpo_rloo.py            # runs what is missing, then writes
                                                     # docs/prime_grpo_rloo.png and _table.md
"""

from compare import Method, main

METHODS = [
    Method("GRPO", "grpo", "configs/quickstart.yaml"),
    Method("RLOO (outcome only)", "rloo", "configs/quickstart.yaml", ["algo.advantage=rloo"]),
    Method("PRIME", "prime", "configs/prime_quickstart.yaml"),
]

if __name__ == "__main__":
    main(METHODS, "prime_grpo_rloo", "built-in task", __doc__.splitlines()[0])
