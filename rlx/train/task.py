"""What a run trains on: tokenizer, prompt records (train / held-out), SFT demonstrations.

The built-in task trains its own sentencepiece tokenizer; artefacts that only depend on the
task's settings are cached under `<out_dir>/.cache/` so a second run starts faster.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rlx.config import Config, ConfigError
from rlx.data import synthetic
from rlx.data.templates import render_prompt
from rlx.generate import Prompter

ARITH_VOCAB = 320


@dataclass
class Task:
    tokenizer: object
    train: list[dict]
    heldout: list[dict]
    # SFT demonstrations: (record, response text) pairs; empty when the task has none.
    demos: list[tuple[dict, str]] = field(default_factory=list)
    # How a record becomes prompt tokens, for training, SFT and evaluation alike.
    prompter: Prompter | None = None


def cache_key(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir(cfg: Config, *parts: object) -> Path:
    return Path(cfg.run.out_dir) / ".cache" / cache_key(*parts)


def arith_task(cfg: Config) -> Task:
    from rlx.models.tokenizer import Tokenizer, train_sentencepiece

    d = cfg.data
    train, heldout = synthetic.arith_task(d.train_size, d.heldout_size, d.difficulty, cfg.run.seed)
    tok_dir = cache_dir(cfg, "arith-tokenizer", d.train_size, d.heldout_size, d.difficulty,
                        cfg.run.seed, ARITH_VOCAB)
    if (tok_dir / "tokenizer.model").exists():
        tokenizer = Tokenizer.load(tok_dir)
    else:
        texts = [render_prompt(r["question"], d.template) + synthetic.worked_solution(r["problem"])
                 for r in train[:4000]]
        tokenizer = train_sentencepiece(texts, tok_dir, ARITH_VOCAB)
    responses = synthetic.demonstrations(train, cfg.run.seed + 1, d.shortcut_rate, d.slip_rate)
    return Task(tokenizer, train, heldout, list(zip(train, responses)))


def file_task(cfg: Config, tokenizer) -> Task:
    from rlx.data.loaders import ALIASES, EVAL_SETS, load_eval, load_records

    d = cfg.data
    if d.task in ("jsonl", "parquet", "json"):
        if not d.path:
            raise ConfigError(f"data.task={d.task} needs data.path (a .jsonl / .parquet prompt set)")
        records = load_records(d.path, question_field=d.question_field, answer_field=d.answer_field)
    elif d.task in EVAL_SETS or d.task in ALIASES:
        records = load_eval(d.task)
    else:
        raise ConfigError(f"data.task='{d.task}' is not known: use 'arith' (built-in), 'jsonl' / "
                          f"'parquet' with data.path, or an evaluation set ({', '.join(EVAL_SETS)})")
    heldout_n = min(d.heldout_size, len(records) // 10)
    demos = []
    if d.response_field:
        missing = [i for i, r in enumerate(records) if not isinstance(r.get(d.response_field), str)]
        if missing:
            raise ConfigError(f"data.response_field='{d.response_field}': record {missing[0]} (and "
                              f"{len(missing) - 1} more) has no text there; fields available: "
                              f"{sorted(records[missing[0]])}")
        demos = [(r, r[d.response_field]) for r in records[heldout_n:]]
    return Task(tokenizer, records[heldout_n:], records[:heldout_n], demos)


def build_task(cfg: Config, tokenizer=None) -> Task:
    if cfg.data.task == "arith":
        task = arith_task(cfg)
    else:
        if tokenizer is None:
            from rlx.build import build_tokenizer

            tokenizer = build_tokenizer(cfg.tokenizer, cfg.model)
        task = file_task(cfg, tokenizer)
    task.prompter = Prompter(task.tokenizer, cfg.data.template, cfg.tokenizer.chat_style)
    return drop_long_prompts(task, max_prompt_len(cfg))


def max_prompt_len(cfg: Config) -> int:
    return cfg.data.max_prompt_len or cfg.engine.max_prefill_length


def drop_long_prompts(task: Task, limit: int) -> Task:
    """Records whose prompt encodes to more than `limit` tokens leave the task at load (counted),
    rather than crashing the step that draws them -- and again on every resume."""

    def keep(records):
        return [r for r in records if len(task.prompter.encode(task.prompter.text(r["question"]))) <= limit]

    train, heldout = keep(task.train), keep(task.heldout)
    dropped = len(task.train) - len(train) + len(task.heldout) - len(heldout)
    if dropped:
        print(f"rlx data: dropped {dropped} of {len(task.train) + len(task.heldout)} prompts longer than "
              f"{limit} tokens (data.max_prompt_len, default engine.max_prefill_length)")
        if not train:
            raise ConfigError(f"every training prompt is longer than {limit} tokens; raise data.max_prompt_len "
                              "and engine.max_prefill_length")
        keep_ids = {id(r) for r in train}
        task.demos = [(r, text) for r, text in task.demos if id(r) in keep_ids]
    task.train, task.heldout = train, heldout
    return task
