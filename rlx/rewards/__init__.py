"""Reward functions and the runner that calls them in worker processes.

Built-in rewards by name (each in the runner signature `fn(prompts, responses, **row_fields)`):

    math      1.0 / 0.0 by answer equivalence with the row's "answer" (rlx.rewards.math)
    simplerl  SimpleRL-Zoo: +1 correct, -0.5 wrong, -1 without "boxed" (rlx.rewards.format)
    boxed     1.0 when the response has a complete \\boxed{} answer (rlx.rewards.format)
    empo      label-free: the frequency of the response's answer in its group (rlx.rewards.empo);
              a group-level reward, it needs each row's group id as the `group` row field
"""

from __future__ import annotations

import functools
from typing import Callable

from rlx.rewards import empo as empo_rewards
from rlx.rewards import format as format_rewards
from rlx.rewards import math as math_rewards
from rlx.rewards.pool import RewardFn, RewardResult, RewardRunner

REWARD_FNS: dict[str, Callable] = {
    "math": math_rewards.reward_fn,
    "simplerl": format_rewards.simplerl_fn,
    "boxed": format_rewards.boxed_fn,
    "empo": empo_rewards.empo_fn,
}

# Rewards that look across a prompt's group: called on the whole batch with a `group` field.
GROUP_REWARDS = frozenset({"empo"})


def get_reward_fn(name: str, **options) -> Callable:
    """A built-in reward by name, with keyword options bound (a picklable partial)."""
    if name not in REWARD_FNS:
        raise ValueError(f"unknown reward {name!r}; valid names: {sorted(REWARD_FNS)}")
    return functools.partial(REWARD_FNS[name], **options) if options else REWARD_FNS[name]


__all__ = ["GROUP_REWARDS", "REWARD_FNS", "RewardFn", "RewardResult", "RewardRunner", "get_reward_fn"]
