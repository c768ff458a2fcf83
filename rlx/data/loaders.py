"""Question/answer records from the evaluation sets and from any jsonl or parquet file.

Every record comes out as `{"id", "question", "answer", "answer_raw", ...original fields}`:
`answer` is normalised for the verifier -- GSM8K's worked solution "...#### 1,000" -> "1000",
AIME's zero-padded "025" -> "25", AMC's float 27.0 -> "27" -- and `answer_raw` keeps what the
file said.

The data directory is `$RLX_DATA_DIR`, else `../shared/data` beside the repository (this
machine's layout); `load_eval` looks for `eval/<name>.jsonl` there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rlx.rewards.math import gold_answer


@dataclass(frozen=True)
class EvalSet:
    file: str  # relative to the data directory
    question_field: str
    answer_field: str
    id_field: str | None


EVAL_SETS = {
    "gsm8k_test": EvalSet("eval/gsm8k_test.jsonl", "question", "answer", None),
    "math500_test": EvalSet("eval/math500_test.jsonl", "problem", "answer", "unique_id"),
    "aime24_test": EvalSet("eval/aime24_test.jsonl", "problem", "answer", "id"),
    "amc23_test": EvalSet("eval/amc23_test.jsonl", "problem", "answer", "id"),
}
ALIASES = {"gsm8k": "gsm8k_test", "math500": "math500_test", "aime24": "aime24_test", "amc23": "amc23_test"}


def data_dir() -> Path:
    """`$RLX_DATA_DIR`, else `../shared/data` next to the repository root."""
    env = os.environ.get("RLX_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def normalize_answer(value) -> str:
    """A gold answer as the string the verifier expects (see the module docstring)."""
    text = gold_answer(value)
    # Integers written as floats ("27.0", AMC via a string column) or zero-padded (AIME prints
    # three digits) are plain integers to every grader.
    m = re.fullmatch(r"([+-]?)(\d+)(?:\.0+)?", text)
    if m:
        digits = m.group(2).lstrip("0") or "0"
        return ("-" if m.group(1) == "-" and digits != "0" else "") + digits
    return text


def load_eval(name: str, *, root: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    """An evaluation set by name: gsm8k_test, math500_test, aime24_test, amc23_test (or the
    short names gsm8k, math500, aime24, amc23)."""
    key = ALIASES.get(name, name)
    if key not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; valid names: {sorted(EVAL_SETS)} "
                         f"(or {sorted(ALIASES)})")
    spec = EVAL_SETS[key]
    base = Path(root) if root is not None else data_dir()
    return load_records(base / spec.file, question_field=spec.question_field,
                        answer_field=spec.answer_field, id_field=spec.id_field, limit=limit)


def load_records(path: str | os.PathLike, *, question_field: str = "question", answer_field: str = "answer",
                 id_field: str | None = None, limit: int | None = None) -> list[dict]:
    """Records from a .jsonl / .json (a list of objects) / .parquet file with the given fields.

    `answer_field=""` reads a set without answers (label-free training, e.g. EMPO): every
    record's answer is None."""
    path = Path(path)
    if not path.is_file():
        hint = ("set RLX_DATA_DIR to the folder holding eval/" if path.parent.name == "eval"
                else "check data.path")
        raise FileNotFoundError(f"data file {path} does not exist; {hint}")
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, row in enumerate(rows):
        for field in (question_field, *(f for f in (answer_field, id_field) if f)):
            if field not in row:
                raise KeyError(f"{path}: record {i} has no field {field!r}; fields available: "
                               f"{sorted(row)}; set data.question_field / data.answer_field to one of them "
                               "(data.answer_field='' for a set without answers)")
        ident = str(row[id_field]) if id_field else f"{path.stem}-{i}"
        extra = {k: v for k, v in row.items() if k not in ("id", "question", "answer", "answer_raw")}
        raw = row[answer_field] if answer_field else None
        out.append({"id": ident, "question": row[question_field],
                    "answer": None if raw is None else normalize_answer(raw), "answer_raw": raw, **extra})
    return out


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        return rows
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}; "
                             "use .jsonl for one record per line")
        return rows
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported data file type {suffix!r}; use .jsonl, .json or .parquet")
