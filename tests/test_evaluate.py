"""The eval job: exact scoring of canned responses, config/data errors, prompts, and an
end-to-end `python -m rlx.launch eval` smoke on a random tiny model.

Run: PYTHONPATH=. pytest -q tests/test_evaluate.py  (about 40 s; the smoke is most of it)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlx.config import ConfigError, DataSection, EvalSection, load_config
from rlx.evaluate import (Response, build_prompt, build_tokenizer_for, check_eval_section,
                          evaluate_dataset, format_markdown, load_datasets, passes)

REPO = Path(__file__).resolve().parent.parent

# Four problems x n=4 samples, each sample (text, finish reason, tokens); the verdicts and
# extracted answers are in the comments, the metrics are worked out by hand below.
GOLDS = ["18", "5", "\\frac{1}{2}", "7"]
SAMPLED = [
    [("so \\boxed{18}", "eos", 5),          # 18 correct
     ("the answer is 17", "eos", 6),        # 17 wrong
     ("\\boxed{18.0}", "eos", 4),           # 18.0 correct, same cluster as 18
     ("no idea", "length", 16)],            # unextractable
    [("I think 4", "eos", 3),               # 4 wrong
     ("\\boxed{5}", "eos", 3),              # 5 correct
     ("#### 4", "eos", 2),                  # 4 wrong
     ("The final answer is 5", "eos", 5)],  # 5 correct -> 2-2 tie, "4" came first
    [("", "length", 16),                    # unextractable
     ("blah", "length", 16),                # unextractable
     ("0.5", "eos", 1),                     # 0.5 correct
     ("\\boxed{2}", "eos", 3)],             # 2 wrong -> 1-1 tie, "0.5" came first
    [("", "length", 16), ("abc", "length", 16), ("no", "eos", 1), ("?", "eos", 1)],  # nothing
]
GREEDY = [("\\boxed{18}", "eos", 4), ("4", "eos", 1), ("\\boxed{0.5}", "eos", 4), ("", "length", 16)]


def _fake_generate(calls):
    def generate(prompts, *, n, temperature, seed):
        calls.append((list(prompts), n, temperature, seed))
        table = GREEDY if temperature == 0 else SAMPLED
        out = []
        for p in prompts:
            i = int(p.split()[-1])
            rows = [table[i]] if temperature == 0 else table[i]
            assert len(rows) == n
            out.append([Response(*r) for r in rows])
        return out
    return generate


def test_canned_responses_score_exactly():
    records = [{"id": f"p{i}", "answer": g} for i, g in enumerate(GOLDS)]
    prompts = [f"problem {i}" for i in range(4)]
    ev = EvalSection(n=4, k=(1, 2, 4), temperature=0.7)
    calls = []
    result, rows = evaluate_dataset("canned", records, prompts, _fake_generate(calls), ev, seed=3, chunk=3)

    # Per problem: c correct, pass@2 = 1 - C(4-c, 2)/C(4, 2); maj@k over blocks of k samples.
    #   A c=2: pass@1 1/2  pass@2 5/6  pass@4 1 | maj@1 1/2  maj@2 [18,17]->18 ok, [18.0,-]->ok: 1  maj@4 1
    #   B c=2: pass@1 1/2  pass@2 5/6  pass@4 1 | maj@1 1/2  maj@2 [4,5]->4, [4,5]->4: 0   maj@4 tie->4: 0
    #   C c=1: pass@1 1/4  pass@2 1/2  pass@4 1 | maj@1 1/4  maj@2 [-,-]->none, [0.5,2]->0.5: 1/2  maj@4 1
    #   D c=0: everything 0
    sampled = result["sampled"]
    assert result["problems"] == 4 and sampled["n"] == 4
    expected = {"pass@1": 1.25 / 4, "pass@2": (5 / 6 + 5 / 6 + 1 / 2) / 4, "pass@4": 3 / 4,
                "maj@1": 1.25 / 4, "maj@2": 1.5 / 4, "maj@4": 2 / 4}
    for key, value in expected.items():
        assert sampled[key] == pytest.approx(value, abs=1e-12), key
    assert sampled["answer_rate"] == pytest.approx(9 / 16)
    assert sampled["truncation_rate"] == pytest.approx(5 / 16)
    assert sampled["mean_response_len"] == pytest.approx(sum(r[2] for p in SAMPLED for r in p) / 16)
    assert sampled["temperature"] == 0.7

    greedy = result["greedy"]
    assert greedy["pass@1"] == 0.5 and greedy["n"] == 1 and "maj@1" not in greedy
    assert greedy["truncation_rate"] == 0.25 and greedy["answer_rate"] == 0.75

    # Greedy first, then sampling; chunks of 3 problems, each call with its own seed.
    assert [(len(p), n, t) for p, n, t, _ in calls] == [(3, 1, 0.0), (1, 1, 0.0), (3, 4, 0.7), (1, 4, 0.7)]
    assert calls[2][3] != calls[3][3]

    assert len(rows) == 4 + 16
    assert set(rows[0]) == {"id", "mode", "sample", "prompt", "response", "extracted", "gold",
                            "correct", "finish_reason", "length"}
    b_rows = [r for r in rows if r["id"] == "p1" and r["mode"] == "sampled"]
    assert [(r["extracted"], r["correct"]) for r in b_rows] == [("4", False), ("5", True), ("4", False), ("5", True)]
    assert [r["extracted"] for r in rows if r["id"] == "p3"] == [None] * 5


def test_boxed_required_counts_and_votes_only_boxed_answers():
    records = [{"id": "p1", "answer": "5"}]
    ev = EvalSection(n=4, k=(4,), temperature=1.0, greedy=False, boxed_required=True)
    result, rows = evaluate_dataset("b", records, ["problem 1"], _fake_generate([]), ev)
    assert [r["extracted"] for r in rows] == [None, "5", None, None]
    assert result["sampled"]["pass@4"] == 1.0 and result["sampled"]["maj@4"] == 1.0
    assert "greedy" not in result


def test_passes_follow_n_temperature_and_greedy():
    assert passes(EvalSection()) == [("greedy", 1, 0.0)]
    assert passes(EvalSection(greedy=False)) == [("greedy", 1, 0.0)]
    assert passes(EvalSection(n=8, k=(1, 8), temperature=0.6)) == [("greedy", 1, 0.0), ("sampled", 8, 0.6)]
    assert passes(EvalSection(n=1, temperature=1.0, greedy=False)) == [("sampled", 1, 1.0)]


@pytest.mark.parametrize("fields,match", [
    ({}, "eval.datasets is empty"),
    ({"datasets": ("gsm8k",), "n": 4, "temperature": 0.0}, "set eval.temperature > 0"),
    ({"datasets": ("gsm8k",), "n": 4, "k": (1, 8), "temperature": 0.6}, r"raise eval.n or drop \[8\]"),
    ({"datasets": ("gsm8k",), "top_p": 0.0}, "eval.top_p"),
    ({"datasets": ("gsm8k",), "limit": -1}, "eval.limit"),
])
def test_eval_section_errors_name_the_fix(fields, match):
    with pytest.raises(ConfigError, match=match):
        check_eval_section(EvalSection(**fields))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown dataset 'gsm9k'; valid names: aime24, amc23, gsm8k, math500"):
        load_datasets(["gsm9k"], DataSection())


def test_file_datasets_use_data_fields_and_limit(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"problem": f"q{i}", "solution": str(i)}) + "\n" for i in range(5)))
    data = DataSection(question_field="problem", answer_field="solution")
    out = load_datasets([str(path)], data, limit=3)
    assert list(out) == ["mine"] and [r["question"] for r in out["mine"]] == ["q0", "q1", "q2"]
    with pytest.raises(ConfigError, match="set data.question_field"):
        load_datasets([str(path)], DataSection())
    with pytest.raises(ConfigError, match="names 'mine' twice"):
        load_datasets([str(path), str(path)], data)
    with pytest.raises(ConfigError, match="does not exist"):
        load_datasets([str(tmp_path / "missing.parquet")], data)


def test_prompts_from_template_and_chat_style():
    assert build_prompt("1+1?", "plain") == "1+1?\n"
    assert build_prompt("1+1?", "plain", "chatml") == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert build_prompt("1+1?", "qwen25-math-cot").startswith("<|im_start|>system\nPlease reason")
    with pytest.raises(ConfigError, match="leave tokenizer.chat_style empty"):
        build_prompt("1+1?", "qwen25-math-cot", "chatml")
    with pytest.raises(ConfigError, match="choose one of qwen25-math-cot"):
        build_prompt("1+1?", "fancy")
    with pytest.raises(ConfigError, match="not a chat style"):
        build_prompt("1+1?", "plain", "vicuna")


def test_random_preset_without_tokenizer_trains_one(tmp_path, capsys):
    cfg = load_config(None, ["run.kind=eval"])
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=512))
    texts = [f"What is {i} + {i + 3}? Put it in \\boxed{{}}." for i in range(200)]
    tok = build_tokenizer_for(cfg, model, texts, tmp_path)
    assert 0 < tok.vocab_size <= 512 and (tmp_path / "tokenizer" / "tokenizer.model").is_file()
    assert "random weights" in capsys.readouterr().out
    cfg = load_config(None, ["run.kind=eval", f"tokenizer.path={tmp_path / 'tokenizer'}"])
    with pytest.raises(ConfigError, match="model's vocabulary is 100"):
        build_tokenizer_for(cfg, SimpleNamespace(config=SimpleNamespace(vocab_size=100)), texts, tmp_path)


def test_markdown_table_has_a_column_per_metric():
    res = {"problems": 2,
           "greedy": {"pass@1": 0.5, "mean_response_len": 12.0, "truncation_rate": 0.0},
           "sampled": {"pass@1": 0.25, "pass@2": 0.5, "maj@1": 0.25, "maj@2": 0.0,
                       "mean_response_len": 30.4, "truncation_rate": 0.125}}
    table = format_markdown({"gsm8k": res}, EvalSection(n=2, k=(1, 2), temperature=0.6))
    header, _, row = table.splitlines()[:3]
    assert header == ("| dataset | problems | greedy pass@1 | greedy len | greedy trunc % | pass@1 | pass@2 "
                      "| maj@1 | maj@2 | sampled len | sampled trunc % |")
    assert row == "| gsm8k | 2 | 50.0 | 12 | 0.0 | 25.0 | 50.0 | 25.0 | 0.0 | 30 | 12.5 |"


def _engine_available() -> bool:
    try:
        from rlx.engine import rollout  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _engine_available(), reason="rlx.engine is not importable yet")
def test_launch_eval_end_to_end(tmp_path):
    from rlx.models.tokenizer import train_sentencepiece

    lines = [f"Question {i}: what is {i} plus {2 * i}? Reason step by step, the answer is \\boxed{{{3 * i}}}."
             for i in range(300)]
    train_sentencepiece(lines, tmp_path / "tok", vocab_size=400)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"problem": f"What is {i} plus 1?", "solution": i + 1}) + "\n"
                            for i in range(6)))
    args = [sys.executable, "-m", "rlx.launch", "eval", "configs/eval_math.yaml", "eval.limit=4",
            "model.overrides.n_layers=1",
            f"eval.datasets=[{mine}]", "eval.n=2", "eval.k=[1,2]", "eval.max_new_tokens=8",
            "engine.max_concurrent_decodes=8", "data.question_field=problem", "data.answer_field=solution",
            f"tokenizer.path={tmp_path / 'tok'}", f"run.out_dir={tmp_path / 'runs'}", "run.name=smoke"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir = tmp_path / "runs" / "smoke"
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["datasets"]) == ["mine"]
    res = results["datasets"]["mine"]
    assert res["problems"] == 4
    assert set(res["greedy"]) >= {"pass@1", "mean_response_len", "truncation_rate", "answer_rate"}
    assert set(res["sampled"]) >= {"pass@1", "pass@2", "maj@1", "maj@2", "mean_response_len", "truncation_rate"}
    assert 0 < res["greedy"]["mean_response_len"] <= 8
    rows = [json.loads(line) for line in (run_dir / "samples_mine.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * (1 + 2)
    assert {r["finish_reason"] for r in rows} <= {"eos", "stop", "length"}
    assert [r["gold"] for r in rows[:4]] == ["1", "2", "3", "4"]
    assert all(set(r) >= {"prompt", "response", "extracted", "gold", "correct", "finish_reason"} for r in rows)
    table = (run_dir / "results.md").read_text()
    assert "| dataset | problems | greedy pass@1" in table and "| mine | 4 |" in table
    assert "| dataset |" in proc.stdout
