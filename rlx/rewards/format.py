"""Format-aware rewards: SimpleRL-Zoo's boxed-answer reward and a plain boxed-format check.

SimpleRL-Zoo (hkust-nlp/simpleRL-reason, `preprocess_box_response_for_qwen_prompt`) scores a
response +1 when its answer is correct, -0.5 when it is wrong, and -1 when the text contains no
"boxed" at all -- the last rule overrides the others, so a correct but unboxed answer gets -1.
Their check is the substring "boxed"; we keep that, and take the answer from the last complete
\\boxed{} (an unterminated one therefore scores as wrong, -0.5, as in their code).
"""

from __future__ import annotations

from rlx.rewards import math as math_reward

SIMPLERL_CORRECT = 1.0
SIMPLERL_WRONG = -0.5
SIMPLERL_UNBOXED = -1.0


def simplerl(response: str, gold, *, correct: float = SIMPLERL_CORRECT,
             wrong: float = SIMPLERL_WRONG, unboxed: float = SIMPLERL_UNBOXED,
             timeout: float = math_reward.DEFAULT_TIMEOUT) -> float:
    """SimpleRL-Zoo's reward for one response: correct / wrong-but-boxed / no "boxed"."""
    if "boxed" not in response:
        return unboxed
    ok = math_reward.reward(response, gold, boxed_required=True, timeout=timeout)
    return correct if ok else wrong


def boxed(response: str) -> float:
    """1.0 when the response states an answer in a complete \\boxed{}, else 0.0."""
    return 1.0 if math_reward.has_boxed(response) else 0.0


def simplerl_fn(prompts: list[str], responses: list[str], *, answer: list, correct: float = SIMPLERL_CORRECT,
                wrong: float = SIMPLERL_WRONG, unboxed: float = SIMPLERL_UNBOXED,
                timeout: float = math_reward.DEFAULT_TIMEOUT, **_unused) -> list[float]:
    """`simplerl` in the reward-runner signature; gold answers come from the "answer" field."""
    return [simplerl(r, g, correct=correct, wrong=wrong, unboxed=unboxed, timeout=timeout)
            for r, g in zip(responses, answer)]


def boxed_fn(prompts: list[str], responses: list[str], **_unused) -> list[float]:
    """`boxed` in the reward-runner signature (a pure format reward; needs no gold)."""
    return [boxed(r) for r in responses]
