"""Evaluation-set and file loaders, answer normalisation, prompt templates.

Run: PYTHONPATH=. pytest -q tests/test_data_loaders.py  (a few seconds)
"""

from __future__ import annotations

import json
import shutil

import pytest

from rlx.data import load_eval, load_records, normalize_answer, render_prompt
from rlx.data.loaders import EVAL_SETS, data_dir
from rlx.rewards import math as rm

needs_data = pytest.mark.skipif(not (data_dir() / "eval").is_dir(), reason="shared eval data not found")


@needs_data
@pytest.mark.parametrize("name,count", [("gsm8k_test", 1319), ("math500_test", 500),
                                        ("aime24_test", 30), ("amc23_test", 40)])
def test_eval_sets_load_normalised(name, count):
    records = load_eval(name)
    assert len(records) == count
    assert len({r["id"] for r in records}) == count
    for r in records:
        assert set(r) >= {"id", "question", "answer", "answer_raw"}
        assert isinstance(r["question"], str) and r["question"].strip()
        assert isinstance(r["answer"], str) and r["answer"]
        # The normalised gold still verifies against what the file said.
        raw = rm.gold_answer(r["answer_raw"])
        assert rm.reward(f"\\boxed{{{raw}}}", r["answer"]) == 1.0, (r["id"], r["answer"], raw)
    if name in ("gsm8k_test", "aime24_test", "amc23_test"):
        assert all(r["answer"].lstrip("-").isdigit() and not r["answer"].startswith("0")
                   or r["answer"] == "0" for r in records)


@needs_data
def test_eval_examples_and_aliases():
    gsm = load_eval("gsm8k")
    assert gsm[0]["answer"] == "18" and gsm[0]["id"] == "gsm8k_test-0"
    assert "2,125" in [r["answer_raw"].rsplit("#### ", 1)[1] for r in gsm]
    assert "2125" in [r["answer"] for r in gsm]
    aime = {r["id"]: r for r in load_eval("aime24")}
    assert aime["67"]["answer"] == "25" and aime["67"]["answer_raw"] == "025"
    amc = load_eval("amc23", limit=1)[0]
    assert amc["answer"] == "27" and amc["answer_raw"] == 27.0 and amc["url"].startswith("https://")
    m = load_eval("math500", limit=3)
    assert m[0]["id"] == m[0]["unique_id"] and m[0]["question"] == m[0]["problem"]


@pytest.mark.parametrize("raw,norm", [
    ("Step one.\n#### 1,450,000", "1450000"), ("025", "25"), ("000", "0"), ("0", "0"), (27.0, "27"),
    (2.5, "2.5"), (7, "7"), ("-007", "-7"), (" \\frac{1}{2} ", "\\frac{1}{2}"), ("0.5", "0.5"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_custom_files_all_formats(tmp_path):
    rows = [{"q": "1+1?", "a": "#### 2", "uid": 10, "meta": "x"}, {"q": "2+2?", "a": 4.0, "uid": 11, "meta": "y"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist([dict(r, a=str(r["a"])) for r in rows]), tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "parquet"):
        recs = load_records(tmp_path / f"d.{ext}", question_field="q", answer_field="a", id_field="uid")
        assert [(r["id"], r["question"], r["answer"], r["meta"]) for r in recs] == \
            [("10", "1+1?", "2", "x"), ("11", "2+2?", "4", "y")], ext
    recs = load_records(tmp_path / "d.jsonl", question_field="q", answer_field="a", limit=1)
    assert [r["id"] for r in recs] == ["d-0"]


def test_errors_name_file_field_and_choices(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "p", "solution": "s"}) + "\n")
    with pytest.raises(KeyError) as err:
        load_records(path)
    assert str(path) in str(err.value) and "'question'" in str(err.value)
    assert "['problem', 'solution']" in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="valid names"):
        load_eval("gsm9k")
    with pytest.raises(ValueError, match="unsupported data file type"):
        (tmp_path / "d.csv").write_text("a,b\n")
        load_records(tmp_path / "d.csv")


@needs_data
def test_data_dir_from_env(tmp_path, monkeypatch):
    (tmp_path / "eval").mkdir()
    src = data_dir() / EVAL_SETS["aime24_test"].file
    shutil.copy(src, tmp_path / "eval" / "aime24_test.jsonl")
    monkeypatch.setenv("RLX_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert len(load_eval("aime24")) == 30
    with pytest.raises(FileNotFoundError, match="RLX_DATA_DIR"):
        load_eval("amc23")


BOXED = "Please reason step by step, and put your final answer within \\boxed{}."


def test_templates_exact():
    q = "What is $1+1$?"
    # Qwen2.5-Math evaluation's "qwen25-math-cot" prompt, verbatim.
    assert render_prompt(q, "qwen25-math-cot") == (
        f"<|im_start|>system\n{BOXED}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(q, "llama3-chat") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{q}\n{BOXED}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_prompt(q, "plain") == f"{q}\n"
    assert render_prompt(q, "plain", instruction="Answer:") == f"{q}\nAnswer:\n"
    assert render_prompt(q, "boxed") == f"{q}\n{BOXED}"
    with pytest.raises(ValueError, match="valid templates: \\['qwen25-math-cot', 'llama3-chat', 'plain', 'boxed'\\]"):
        render_prompt(q, "qwen")
