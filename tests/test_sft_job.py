"""`python -m rlx.launch sft`: trains on the task's demonstrations and exports the model;
jsonl sets give demonstrations through data.response_field."""

import json

import pytest

from rlx import launch
from rlx.config import ConfigError, load_config
from rlx.train.task import build_task

from test_rl_loop import SMALL


def test_sft_job_trains_and_exports(tmp_path):
    args = ["sft", "configs/quickstart.yaml", *SMALL, f"run.out_dir={tmp_path}", "run.name=sft1",
            "sft.steps=30", "sft.batch_size=16", "data.train_size=300"]
    assert launch.main(args) == 0
    run = tmp_path / "sft1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sft_steps"] == 30 and summary["sft_loss_last"] < summary["sft_loss_first"]
    assert (run / "final" / "config.json").exists() and (run / "final" / "model.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 30


class _Tok:
    eos_id = 0

    def encode(self, text):
        return [ord(c) % 50 + 1 for c in text]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_response_field_gives_demonstrations(tmp_path):
    rows = [{"question": f"q{i}", "answer": str(i), "solution": f"so {i}"} for i in range(20)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(None, ["data.task=jsonl", f"data.path={path}", "data.response_field=solution",
                             "data.heldout_size=2"])
    task = build_task(cfg, tokenizer=_Tok())
    assert [text for _, text in task.demos] == [f"so {i}" for i in range(2, 20)]  # held-out ones excluded
    assert all(r["question"] == f"q{i + 2}" for i, (r, _) in enumerate(task.demos))


def test_missing_response_is_a_config_error(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}] * 5)
    cfg = load_config(None, ["data.task=jsonl", f"data.path={path}", "data.response_field=solution"])
    with pytest.raises(ConfigError, match="data.response_field='solution'"):
        build_task(cfg, tokenizer=_Tok())
