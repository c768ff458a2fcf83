"""Host-side stop rules: stop strings and stop patterns, checked on decoded text at sync points.

A stop is found at the first token count t such that decode(ids[:t]) contains it, so the
response is cut exactly after the stop's last token, however the tokenizer split it.
"""

from __future__ import annotations

import re
from typing import Sequence, Union

# Step-wise generation (PRM scoring, particle filtering): one reasoning step per call.
STEP_STOP = "\n\n"
# Tool use (SimpleTIR): stop right after the closing fence of the first python block.
CODE_BLOCK_STOP = re.compile(r"```python\n.*?```", re.DOTALL)

Stop = Union[str, "re.Pattern[str]"]


class StopChecker:
    """Finds the first stop in a growing response; `tokenizer` needs only `.decode(ids)`."""

    def __init__(self, stop: Sequence[Stop], tokenizer=None):
        stop = tuple(stop)
        if stop and tokenizer is None:
            raise ValueError(f"stop={stop!r} needs a tokenizer to decode the response; pass "
                             "tokenizer= (anything with .decode(ids))")
        bad = [s for s in stop if not isinstance(s, (str, re.Pattern)) or s == ""]
        if bad:
            raise ValueError(f"stop entries must be non-empty strings or compiled regexes, got {bad!r}")
        self.tokenizer = tokenizer
        self.strings = tuple(s for s in stop if isinstance(s, str))
        self.patterns = tuple(s for s in stop if isinstance(s, re.Pattern))
        # A stop string of m characters spans at most m tokens (+1 for a split character).
        self._window = max((len(s) for s in self.strings), default=0) + 1

    def __bool__(self) -> bool:
        return bool(self.strings or self.patterns)

    def _hit(self, ids: Sequence[int], start: int, end: int) -> bool:
        text = self.tokenizer.decode(list(ids[start:end]))
        if any(s in text for s in self.strings):
            return True
        if self.patterns:
            full = text if start == 0 else self.tokenizer.decode(list(ids[:end]))
            return any(p.search(full) for p in self.patterns)
        return False

    def first_stop(self, ids: Sequence[int], checked: int) -> int | None:
        """The smallest t in (checked, len(ids)] whose prefix ids[:t] holds a stop, or None.

        ids[:checked] is known to hold none, so only a window reaching back one stop length
        is decoded for strings (patterns, which can be long, decode from the start).
        """
        end = len(ids)
        if not self or end <= checked:
            return None
        start = max(0, checked - self._window)
        if not self._hit(ids, start, end):
            return None
        lo, hi = checked + 1, end  # hi holds a stop; bisect for the first prefix that does
        while lo < hi:
            mid = (lo + hi) // 2
            if self._hit(ids, start, mid):
                hi = mid
            else:
                lo = mid + 1
        return lo
