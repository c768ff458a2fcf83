"""EMPO's label-free reward: how often a response's answer agrees with its group's answers.

For each prompt's group of G responses: extract each final answer, cluster the answers greedily
by equivalence, and reward response i with p_c(i) = |c(i)| / G -- unless every answer differs
(semantic entropy H = log G: no majority to learn from) or response i has no answer, which earn
0 (ALGORITHMS.md section 5). No gold answer is read, so unlabelled prompts train.

    group_rewards(["3", "3", "3.0", "5", "", "7", "5"], math_equivalent)
        -> [3/7, 3/7, 3/7, 2/7, 0, 1/7, 2/7]

This is a *group-level* reward in the reward-runner signature: the trainer sends each row's
group id as the `group` row field and the whole batch in one call (`chunk_size=0`), so groups
are never split across calls. It runs in reward worker processes, which never import JAX; the
greedy clustering therefore repeats `rlx.kernels.empo.cluster_answers` (pure Python there, but
its module imports JAX) -- tests/test_empo_loop.py checks the two agree.
"""

from __future__ import annotations

from typing import Callable, Sequence

from rlx.rewards import math as math_reward
from rlx.typed_tree import load_attribute

EQUIVALENCES = ("math", "exact")


def extract(response: str, *, boxed_required: bool = True) -> str:
    """A response's final answer ("" when it states none): the last \\boxed{} or, when a box is
    not required, the math verifier's fallbacks ("final answer is", the last number)."""
    answer = math_reward.last_boxed(response) if boxed_required else math_reward.extract_answer(response)
    return (answer or "").strip()


def same_answer(equivalence: str, *, timeout: float = 2.0) -> Callable[[str, str], bool]:
    """The equivalence test named by `rewards.empo.equivalence` (see rlx.config.EmpoSection)."""
    if equivalence == "exact":
        return str.__eq__
    if equivalence == "math":
        return lambda rep, ans: math_reward.equivalent(rep, ans, timeout=timeout)
    return load_judge(equivalence)


def load_judge(spec: str) -> Callable[[str, str], bool]:
    """`module:function`, a judge(a, b) -> bool for free-form answers."""
    if ":" not in spec:
        raise ValueError(f"rewards.empo.equivalence={spec!r}: use one of {EQUIVALENCES} or "
                         "'module:function' naming a judge(a, b) -> bool")
    judge = load_attribute(spec, "rewards.empo.equivalence")  # a ConfigError, itself a ValueError
    if not callable(judge):
        raise ValueError(f"rewards.empo.equivalence={spec!r} is not callable")
    return judge


def cluster(answers: Sequence[str], same: Callable[[str, str], bool]) -> list[int]:
    """Greedy clusters: an answer joins the first cluster whose first member it matches
    (`same(first, answer)`), else opens one; empty answers are always singletons."""
    reps: list[str] = []
    ids: list[int] = []
    for ans in answers:
        cid = next((k for k, rep in enumerate(reps) if ans and rep and same(rep, ans)), None)
        if cid is None:
            reps.append(ans)
            cid = len(reps) - 1
        ids.append(cid)
    return ids


def group_rewards(answers: Sequence[str], same: Callable[[str, str], bool]) -> list[float]:
    """EMPO's reward for one group's answers (the module docstring's formula)."""
    ids = cluster(answers, same)
    counts = [ids.count(c) for c in ids]
    # H < log G exactly when some cluster has two or more members: test that, not floats.
    confident = max(counts, default=0) > 1
    g = len(answers)
    return [c / g if confident and ans else 0.0 for ans, c in zip(answers, counts)]


def empo_fn(prompts: list[str], responses: list[str], *, group: list, equivalence: str = "math",
            boxed_required: bool = True, timeout: float = 2.0, **_unused) -> list[float]:
    """EMPO rewards in the reward-runner signature; `group` holds each row's group id."""
    del prompts
    same = same_answer(equivalence, timeout=timeout)
    answers = [extract(r, boxed_required=boxed_required) for r in responses]
    members: dict = {}
    for i, g in enumerate(group):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(responses)
    for rows in members.values():
        for i, r in zip(rows, group_rewards([answers[i] for i in rows], same)):
            out[i] = r
    return out
