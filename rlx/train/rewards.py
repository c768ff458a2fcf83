"""The trainer's view of rewards: configured functions -> (scores, correctness, metrics)."""

from __future__ import annotations

import numpy as np

from rlx.config import ConfigError, RewardsSection
from rlx.rewards import REWARD_FNS, RewardFn, RewardRunner, get_reward_fn
from rlx.rewards import math as math_rewards


class RewardScorer:
    """Runs `rewards.fns` (weighted, summed) in worker processes with a per-call time limit.

    Accuracy is judged by the math verifier on every response, whatever the reward is, so
    that runs with different reward shaping report the same accuracy.
    """

    def __init__(self, section: RewardsSection):
        fns = []
        for spec in section.fns:
            if spec.name not in REWARD_FNS:
                raise ConfigError(f"rewards.fns: unknown reward '{spec.name}'; valid names: "
                                  f"{', '.join(sorted(REWARD_FNS))}")
            options = {"boxed_required": section.boxed_required} if spec.name == "math" else {}
            fns.append(RewardFn(spec.name, get_reward_fn(spec.name, **options), spec.weight))
        self.uses_math = any(spec.name == "math" for spec in section.fns)
        self.boxed_required = section.boxed_required
        self.runner = RewardRunner(fns, num_workers=section.workers, timeout=section.timeout)

    def __call__(self, rows: list[dict], responses: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
        answers = [r.get("answer", "") for r in rows]
        prompts = [r.get("question", "") for r in rows]
        result = self.runner(prompts, responses, answer=answers)
        scores = np.asarray(result.scores, np.float32)
        if self.uses_math:
            correct = np.asarray(result.per_fn["math"], np.float32) > 0.5
        else:
            correct = np.array([math_rewards.reward(t, a, boxed_required=self.boxed_required) > 0.5
                                for t, a in zip(responses, answers)])
        metrics = {f"reward/{name}": float(np.mean(v)) for name, v in result.per_fn.items()}
        for key, count in result.counters.items():
            if not key.endswith("/ok"):
                metrics[f"reward_calls/{key}"] = float(count)
        return scores, correct.astype(np.float32), metrics
