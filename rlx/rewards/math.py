"""Math answer checking: pull the final answer out of a response and compare it with the gold.

    reward("... so the total is \\boxed{\\frac{1}{2}}.", "0.5")   -> 1.0
    equivalent("025", "25"), equivalent("27.0", "27")            -> True
    extract_answer("... #### 1,000")                              -> "1000"

Two paths (ALGORITHMS.md section 11). The fast path runs in-process and settles most calls in
microseconds: the answers are normalised (dollar signs, \\left/\\right, \\dfrac, degrees, percent,
units in \\text{}, "x =" prefixes, thousands commas) and compared as strings, then -- when both
are plain numbers -- as exact fractions, with decimals rounded to `precision` places as
math-verify does. Only what the fast path cannot settle (expressions, sets, intervals, matrices,
relations) goes to HF math-verify, which runs in a persistent worker process
(`rlx.rewards.workers`) under a hard time limit: math-verify's own timeout uses `signal.alarm`,
which only works in the main thread and cannot interrupt C code, so a pathological expression
would otherwise hang the trainer. A timed-out check counts as "not equivalent" and is counted
in `COUNTERS`.

`equivalent(a, b)` is not symmetric in corner cases (math-verify's is not): pass the reference
answer first.
"""

from __future__ import annotations

import collections
import functools
import re
import threading
from fractions import Fraction

from rlx.rewards.workers import WorkerPool

DEFAULT_TIMEOUT = 5.0
MATCH_TYPES = ("latex", "expr")

# Slow-path bookkeeping, read by the trainer's metrics: calls sent to math-verify, and how many
# of them hit the time limit or failed.
COUNTERS: collections.Counter = collections.Counter()

# ---------------------------------------------------------------------------------------------
# Extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_FINAL = re.compile(r"final answer is\s*:?\s*", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct.*$", re.IGNORECASE | re.DOTALL)
_GSM8K = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?\d+/\d+|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d*\.\d+|-?\d+")
_THOUSANDS = re.compile(r"^([+-]?)([1-9]\d{0,2}(?:,\d{3})+)(\.\d+)?$")


def _braced(text: str, i: int) -> str | None:
    """The brace-matched group opening at text[i] == "{", without its braces; None if unclosed."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{} or \\fbox{} (brace-matched); None when there is none.

    Only the last occurrence counts: when it is unclosed (a truncated response) there is no
    boxed answer. Looking at one occurrence keeps this linear in the text, which matters for
    degenerate responses that repeat "\\boxed{" thousands of times.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    m = _BOXED.match(text, start)
    i = m.end()
    if i < len(text) and text[i] == "{":
        inner = _braced(text, i)
        return inner.strip() if inner is not None else None
    if m.group(0)[-1:] in (" ", "\t"):
        # "\boxed 5": Qwen's evaluation accepts the brace-less form up to the next "$".
        tail = re.match(r"[^\s$]+", text[i:])
        return tail.group(0) if tail else None
    return None


def has_boxed(text: str) -> bool:
    return last_boxed(text) is not None


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            return _strip_math_delimiters(s[len(left):len(s) - len(right)])
    return s


def extract_answer(text: str) -> str | None:
    """The final answer: last \\boxed{}/\\fbox{}, else "#### N", else "final answer is X",
    else the last number (thousands commas removed). None when the text has none of these."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    gsm = _GSM8K.findall(text)
    if gsm and gsm[-1].strip():
        return _plain_number(gsm[-1].strip())
    finals = list(_FINAL.finditer(text))
    if finals:
        tail = _HOPE.sub("", text[finals[-1].end():]).strip().split("\n")[0]
        tail = _strip_math_delimiters(tail.rstrip(". ").strip())
        if tail:
            return tail
    numbers = _NUMBER.findall(text)
    return _plain_number(numbers[-1]) if numbers else None


def _plain_number(s: str) -> str:
    m = _THOUSANDS.match(s.strip())
    return (m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")) if m else s.strip()


def gold_answer(gold) -> str:
    """A dataset's answer as a string: GSM8K's "...#### 1,000" -> "1000", 27.0 -> "27"."""
    if isinstance(gold, bool) or gold is None:
        raise TypeError(f"gold answer must be a string or a number, got {gold!r}")
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, int):
        return str(gold)
    if "####" in gold:
        return _plain_number(gold.rsplit("####", 1)[1].strip())
    return gold.strip()


# ---------------------------------------------------------------------------------------------
# Fast path: normalisation and plain-number comparison

_SUBS = [
    (re.compile(r"\\left\b|\\right\b"), ""),
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree"), ""),
    (re.compile(r"\\[!,;:]|\\ |~"), " "),
    (re.compile(r"\{,\}"), ""),
    (re.compile(r"\\\$"), ""),
]
_UNIT = re.compile(r"^(.*?\d)\s*\\(?:text|textnormal|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}$")
_TEXT = re.compile(r"^\\(?:text|textbf|textnormal|mathrm|mbox)\{([^{}]*)\}$")
_PREFIX = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=[^=<>]+$)")
_NUM = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?$")
_FRAC = re.compile(r"^([+-]?)\\frac\{\s*([+-]?\d+)\s*\}\{\s*(\d+)\s*\}$")
_RATIO = re.compile(r"^([+-]?)(\d+)\s*/\s*(\d+)$")


def normalize(s: str) -> tuple[str, bool]:
    """Cosmetic normalisation for the fast path; returns (text, had_percent).

    Deliberately conservative: anything it turns equal must be equal to math-verify too,
    because a fast "yes" never reaches the careful comparison.
    """
    s = gold_answer(s) if "####" in s else s
    s = _strip_math_delimiters(s.strip())
    m = re.match(r"\\(?:boxed|fbox)\s*(?=\{)", s)
    if m and _braced(s, m.end()) is not None and len(_braced(s, m.end())) == len(s) - m.end() - 2:
        s = _braced(s, m.end())  # the whole answer is one \boxed{...}
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    s = " ".join(s.split()).rstrip(".").strip()
    percent = bool(re.search(r"\\?%$", s))
    s = re.sub(r"\s*\\?%$", "", s)
    m = _UNIT.match(s)  # "15\text{ cm}" -> "15": a unit word after a number
    if m:
        s = m.group(1)
    m = _TEXT.match(s)
    if m:
        s = m.group(1).strip()
    s = _PREFIX.sub("", s)
    s = _plain_number(s)
    return s.strip(), percent


def _as_number(s: str) -> tuple[Fraction, bool] | None:
    """(value, is_decimal) for a plain number, an integer ratio or \\frac{int}{int}; else None.

    Exponents are capped at three digits: "1e999999999" would make Fraction build a
    billion-digit integer in C, where no time limit can stop it.
    """
    try:
        if _NUM.match(s):
            return Fraction(s), bool(re.search(r"[.eE]", s))
        m = _FRAC.match(s) or _RATIO.match(s)
        if m and int(m.group(3)):
            sign = -1 if m.group(1) == "-" else 1
            return sign * Fraction(int(m.group(2)), int(m.group(3))), False
    except ValueError:  # more digits than int() accepts (sys.get_int_max_str_digits)
        pass
    return None


def fast_verdict(a: str, b: str, precision: int = 6) -> bool | None:
    """True/False when cheap checks settle it, None when the slow path must decide."""
    (na, pa), (nb, pb) = normalize(a), normalize(b)
    if not na or not nb:
        return None
    if na.replace(" ", "") == nb.replace(" ", ""):
        return True
    xa, xb = _as_number(na), _as_number(nb)
    if xa is None or xb is None:
        return None
    (va, deca), (vb, decb) = xa, xb
    if va == vb:
        return True
    if (deca or decb) and round(va, precision) == round(vb, precision):
        return True
    # 28% may be meant as 0.28: leave mixed percent forms to math-verify.
    return None if (pa or pb) else False


# ---------------------------------------------------------------------------------------------
# Slow path: math-verify in a worker process


def _wrap(text: str) -> str:
    """Bare answers ("x^2+1", "\\frac{1}{2}") become inline math so math-verify reads them whole."""
    if re.search(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox", text):  # an escaped \$ is a currency sign
        return text
    return f"${text.strip()}$"


@functools.lru_cache(maxsize=2048)
def _parse(text: str, match_types: tuple[str, ...]):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    targets = [LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig()
               for t in match_types]
    # parsing_timeout=None: the worker's own timer bounds the call; math-verify's alarm would
    # cancel it.
    parsed = parse(_wrap(text), targets, parsing_timeout=None)
    if not parsed and _wrap(text) != text:
        parsed = parse(text, targets, parsing_timeout=None)
    return parsed


def mathverify_equal(gold: str, pred: str, match_types: tuple[str, ...] = MATCH_TYPES,
                     precision: int = 6, strict: bool = True,
                     allow_set_relation_comp: bool = False) -> bool:
    """math-verify's parse + verify, in-process with no time limit; run it via `_slow`."""
    import math_verify.grader
    import math_verify.parser
    from math_verify import verify

    # We disable math-verify's signal timeouts on purpose (see above); silence its warning.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    g, p = _parse(gold, match_types), _parse(pred, match_types)
    return bool(verify(g, p, float_rounding=precision, strict=strict,
                       allow_set_relation_comp=allow_set_relation_comp, timeout_seconds=None))


def _warmup() -> None:
    """Import math-verify and exercise its parser once, before any timed call."""
    mathverify_equal("\\frac{1}{2}", "$0.5$")


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool(1, initializer=_warmup)
        return _POOL


class _SlowFailed(Exception):
    """The worker raised or died: not cached, since a crash may be transient."""


@functools.lru_cache(maxsize=4096)  # keys hold whole responses: keep it small
def _slow_cached(gold: str, pred: str, opts: tuple, timeout: float) -> bool:
    COUNTERS["slow_calls"] += 1
    out = _pool().call(mathverify_equal, gold, pred, *opts, timeout=timeout)
    if out.status == "timeout":
        COUNTERS["timeouts"] += 1
        return False  # cached on purpose: the same pair would hang again
    if not out.ok:
        raise _SlowFailed(out.error)
    return bool(out.value)


def _slow(gold: str, pred: str, opts: tuple, timeout: float) -> bool:
    try:
        return _slow_cached(gold, pred, opts, timeout)
    except _SlowFailed:
        COUNTERS["errors"] += 1
        return False


# ---------------------------------------------------------------------------------------------
# Public API


def equivalent(a: str, b: str, *, timeout: float = DEFAULT_TIMEOUT,
               match_types: tuple[str, ...] = MATCH_TYPES, precision: int = 6, strict: bool = True,
               allow_set_relation_comp: bool = False) -> bool:
    """Whether answer `b` matches reference `a` (string, then number, then symbolic).

    The keyword options are math-verify's: which extractors to run on each side ("latex",
    "expr"), decimals kept when comparing floats, strict variable matching, and whether a set
    may match a relation. A check that takes longer than `timeout` seconds counts as False.
    """
    a, b = gold_answer(a), gold_answer(b)
    verdict = fast_verdict(a, b, precision)
    if verdict is not None:
        return verdict
    opts = (tuple(match_types), precision, strict, allow_set_relation_comp)
    return _slow(a, b, opts, float(timeout))


def reward(response: str, gold, *, boxed_required: bool = False,
           timeout: float = DEFAULT_TIMEOUT) -> float:
    """1.0 when the response's final answer matches `gold`, else 0.0.

    With `boxed_required` an answer outside \\boxed{} earns nothing (the Qwen2.5-Math prompt
    asks for one); without it the answer may also come from "final answer is" or the last
    number.
    """
    gold = gold_answer(gold)
    if boxed_required and not has_boxed(response):
        return 0.0
    answer = extract_answer(response)
    if answer is None:
        return 0.0
    verdict = fast_verdict(gold, answer)
    if verdict is None:
        # math-verify reads the whole response: it handles several boxed parts ("\boxed{1},
        # \boxed{2}") and its own "final answer" anchors better than a single extracted span.
        verdict = _slow(gold, response, (MATCH_TYPES, 6, True, False), float(timeout))
    return 1.0 if verdict else 0.0


def reward_fn(prompts: list[str], responses: list[str], *, answer: list, boxed_required: bool = False,
              timeout: float = DEFAULT_TIMEOUT, **_unused) -> list[float]:
    """`reward` in the reward-runner signature; the gold comes from each row's "answer" field."""
    return [reward(r, g, boxed_required=boxed_required, timeout=timeout)
            for r, g in zip(responses, answer)]
