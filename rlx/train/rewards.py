"""The trainer's view of rewards: configured functions -> (scores, correctness, metrics)."""

from __future__ import annotations

import numpy as np

from rlx.config import RewardsSection
from rlx.rewards import GROUP_REWARDS, RewardFn, RewardRunner, get_reward_fn, resolve_reward
from rlx.rewards import math as math_rewards


class RewardScorer:
    """Runs `rewards.fns` (weighted, summed) in worker processes with a per-call time limit.

    Accuracy is judged by the math verifier on every response, whatever the reward is, so
    that runs with different reward shaping report the same accuracy; a row without a gold
    answer (None or "") has accuracy NaN, so label-free data (EMPO) trains and says so.
    """

    def __init__(self, section: RewardsSection):
        fns = []
        for spec in section.fns:
            if ":" in spec.name:  # your own reward, module:function
                fns.append(RewardFn(spec.name, resolve_reward(spec.name), spec.weight))
                continue
            options = {"boxed_required": section.boxed_required} if spec.name == "math" else {}
            if spec.name == "empo":
                options = _empo_options(section)
            # A group-level reward sees the whole batch in one call, so no group is split.
            chunk = 0 if spec.name in GROUP_REWARDS else None
            fns.append(RewardFn(spec.name, get_reward_fn(spec.name, **options), spec.weight, chunk))
        self.uses_math = any(spec.name == "math" for spec in section.fns)
        self.uses_groups = any(spec.name in GROUP_REWARDS for spec in section.fns)
        self.boxed_required = section.boxed_required
        self.runner = RewardRunner(fns, num_workers=section.workers, timeout=section.timeout)

    def __call__(self, rows: list[dict], responses: list[str],
                 group_ids=None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
        """Scores, correctness (NaN without gold), metrics and each reward's own (unweighted)
        scores; `group_ids` (one per response) say which responses share a prompt -- by
        default, runs of the same row object."""
        answers = [_gold(r) for r in rows]
        prompts = [r.get("question", "") for r in rows]
        fields = {"answer": answers}
        if self.uses_groups:
            fields["group"] = [int(g) for g in (_runs(rows) if group_ids is None else group_ids)]
        result = self.runner(prompts, responses, **fields)
        scores = np.asarray(result.scores, np.float32)
        if self.uses_math:
            correct = np.asarray(result.per_fn["math"], np.float32) > 0.5
        else:
            correct = np.array([a != "" and math_rewards.reward(t, a, boxed_required=self.boxed_required) > 0.5
                                for t, a in zip(responses, answers)])
        correct = np.where([a != "" for a in answers], correct, np.nan).astype(np.float32)
        metrics = {f"reward/{name}": float(np.mean(v)) for name, v in result.per_fn.items()}
        for key, count in result.counters.items():
            if not key.endswith("/ok"):
                metrics[f"reward_calls/{key}"] = float(count)
        per_fn = {name: np.asarray(v, np.float32) for name, v in result.per_fn.items()}
        return scores, correct, metrics, per_fn


def _gold(row: dict):
    answer = row.get("answer")
    return "" if answer is None else answer


def _runs(rows: list[dict]) -> list[int]:
    """Group ids for rows laid out group after group (a rollout repeats its prompt's record)."""
    ids, gid = [], -1
    for i, row in enumerate(rows):
        gid += i == 0 or row is not rows[i - 1]
        ids.append(gid)
    return ids


def _empo_options(section: RewardsSection) -> dict:
    e = section.empo  # its equivalence was checked at config load (rlx.config_checks)
    return {"equivalence": e.equivalence, "boxed_required": section.boxed_required, "timeout": e.timeout}
