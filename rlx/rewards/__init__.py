"""Reward functions and the runner that calls them in worker processes.

Built-in rewards by name (each in the runner signature `fn(prompts, responses, **row_fields)`):

    math      1.0 / 0.0 by answer equivalence with the row's "answer" (rlx.rewards.math)
    simplerl  SimpleRL-Zoo: +1 correct, -0.5 wrong, -1 without "boxed" (rlx.rewards.format)
    boxed     1.0 when the response has a complete \\boxed{} answer (rlx.rewards.format)
    empo      label-free: the frequency of the response's answer in its group (rlx.rewards.empo);
              a group-level reward, it needs each row's group id as the `group` row field

Your own reward is named by its import path, `rewards.fns=[{name: my_pkg.rewards:fn}]`: a
module-level function of that signature (it runs in the worker pool, so it must be importable
there: a module on PYTHONPATH, the working directory included, not a `__main__` script).
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


def resolve_reward(name: str) -> Callable:
    """A built-in reward by name, or `module:function` imported; errors name the fix."""
    from rlx.typed_tree import ConfigError, load_attribute

    if name in REWARD_FNS:
        return REWARD_FNS[name]
    if ":" in name:
        fn = load_attribute(name, "rewards.fns name")
        if not callable(fn):
            raise ConfigError(f"rewards.fns name {name} is not a function")
        if getattr(fn, "__name__", "") == "<lambda>" or "<locals>" in getattr(fn, "__qualname__", ""):
            raise ConfigError(f"rewards.fns name {name}: a lambda or nested function cannot reach the reward "
                              "workers; define it at module level")
        return fn
    raise ConfigError(f"rewards.fns: unknown reward '{name}'; valid names: {', '.join(sorted(REWARD_FNS))}, "
                      "or your own as module:function")


def get_reward_fn(name: str, **options) -> Callable:
    """A built-in reward by name, with keyword options bound (a picklable partial)."""
    if name not in REWARD_FNS:
        raise ValueError(f"unknown reward {name!r}; valid names: {sorted(REWARD_FNS)}")
    return functools.partial(REWARD_FNS[name], **options) if options else REWARD_FNS[name]


__all__ = ["GROUP_REWARDS", "REWARD_FNS", "RewardFn", "RewardResult", "RewardRunner", "get_reward_fn",
           "resolve_reward"]
