"""`python -m rlx.launch eval CONFIG`: score a model on math evaluation sets.

    python -m rlx.launch eval configs/eval_math.yaml eval.datasets=[gsm8k,math500] eval.n=8 eval.k=[1,8]

The model is `model.hf_path` (a Hugging Face directory, or an rlx run's exported `final/`) or a
random-weight `model.preset`. Each entry of `eval.datasets` is an evaluation-set name known to
`rlx.data.load_eval` (gsm8k, math500, aime24, amc23) or a .jsonl/.json/.parquet file read with
`data.question_field` / `data.answer_field`; `eval.limit` keeps the first problems of each.
Prompts are `data.template`, wrapped as a user turn in `tokenizer.chat_style` when set.

Per dataset, up to two passes through the engine:
    greedy   one response per problem at temperature 0 -> pass@1 (`eval.greedy`)
    sampled  `eval.n` responses at `eval.temperature` -> pass@k and maj@k for k in `eval.k`
             (no such pass when n=1 at temperature 0: that is the greedy pass)
pass@k, maj@k (clustering, tie-break) and the response statistics are defined in
`rlx.eval_metrics`. Samples of one call depend on the seed and on which problems share the
call (`chunk`), so they are reproducible for a fixed config.

Writes into the run directory: config.yaml, results.json, results.md (the table also printed
at the end) and samples_<dataset>.jsonl -- one line per response with the prompt, response,
extracted answer, gold answer, verdict and finish reason.

Generation is any function `(prompts, *, n, temperature, seed) -> [[Response] * n per prompt]`,
so scoring is tested with canned responses and no model; `EngineGenerator` is the real one.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rlx.config import Config, ConfigError, DataSection, EvalSection, dump_yaml, to_dict
from rlx.data.loaders import ALIASES, EVAL_SETS, load_eval, load_records
from rlx.data.templates import build_prompt
from rlx.eval_metrics import Equal, Scored, aggregate
from rlx.metrics import Progress, is_chief, prepare_run_dir, write_json
from rlx.rewards.math import equivalent, extract_answer, last_boxed, reward

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Response:
    """One generated response: decoded text, finish reason ("eos"/"stop"/"length"), tokens."""

    text: str
    finish_reason: str
    length: int


Generate = Callable[..., list[list[Response]]]


# ---------------------------------------------------------------------------------------------
# Config, data and prompts


def check_eval_section(ev: EvalSection) -> None:
    """Cross-field checks of the eval section, each naming the fix."""
    if not ev.datasets:
        raise ConfigError(f"eval.datasets is empty; name what to evaluate, e.g. eval.datasets=[gsm8k,math500] "
                          f"(valid names: {', '.join(sorted(ALIASES))}, or .jsonl/.parquet paths)")
    if ev.n < 1 or ev.max_new_tokens < 1 or ev.limit < 0:
        raise ConfigError(f"eval.n={ev.n} and eval.max_new_tokens={ev.max_new_tokens} must be >= 1 "
                          f"and eval.limit={ev.limit} >= 0 (0 = every problem)")
    if ev.temperature < 0:
        raise ConfigError(f"eval.temperature={ev.temperature} must be >= 0 (0 = greedy)")
    if ev.n > 1 and ev.temperature == 0:
        raise ConfigError(f"eval.n={ev.n} samples at eval.temperature=0 would all be the greedy response; "
                          "set eval.temperature > 0 (e.g. 0.6) or eval.n=1")
    bad = [k for k in ev.k if not 1 <= k <= ev.n]
    if bad or not ev.k:
        raise ConfigError(f"eval.k={list(ev.k)}: each k must be in 1..eval.n={ev.n}; raise eval.n "
                          f"or drop {bad or 'nothing -- give at least one k'}")
    if not 0 < ev.top_p <= 1 or ev.top_k < 0 or not 0 <= ev.min_p < 1:
        raise ConfigError(f"eval.top_p={ev.top_p} must be in (0, 1], eval.top_k={ev.top_k} >= 0 "
                          f"(0 = off), eval.min_p={ev.min_p} in [0, 1)")


def load_datasets(entries: Sequence[str], data: DataSection, limit: int = 0) -> dict[str, list[dict]]:
    """{name: records} for `eval.datasets`; a file's name is its stem."""
    out: dict[str, list[dict]] = {}
    for entry in entries:
        name, records = _load_one(entry, data, limit or None)
        if name in out:
            raise ConfigError(f"eval.datasets names '{name}' twice (files are named by their stem); "
                              "drop the repeat or rename one file")
        if not records:
            raise ConfigError(f"eval.datasets: '{entry}' holds no problems; check the file")
        out[name] = records
    return out


def _load_one(entry: str, data: DataSection, limit: int | None) -> tuple[str, list[dict]]:
    try:
        if ALIASES.get(entry, entry) in EVAL_SETS:
            return entry, load_eval(entry, limit=limit)
        if Path(entry).suffix.lower() in DATA_SUFFIXES:
            if not Path(entry).is_file():
                raise ConfigError(f"eval.datasets: file '{entry}' does not exist; check the path "
                                  "(relative paths start at the working directory)")
            return Path(entry).stem, load_records(entry, question_field=data.question_field,
                                                  answer_field=data.answer_field, limit=limit)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"eval.datasets: '{entry}': {e.args[0] if e.args else e}") from None
    raise ConfigError(f"eval.datasets: unknown dataset '{entry}'; valid names: {', '.join(sorted(ALIASES))} "
                      f"(or {', '.join(sorted(EVAL_SETS))}), or a path to a {'/'.join(DATA_SUFFIXES)} file "
                      "whose fields data.question_field / data.answer_field name")


# ---------------------------------------------------------------------------------------------
# Scoring


def passes(ev: EvalSection) -> list[tuple[str, int, float]]:
    """(mode, samples per problem, temperature) of each pass the config asks for."""
    only_greedy = ev.n == 1 and ev.temperature == 0
    out = [("greedy", 1, 0.0)] if ev.greedy or only_greedy else []
    return out + ([] if only_greedy else [("sampled", ev.n, ev.temperature)])


def score_response(text: str, gold: str, boxed_required: bool = False) -> tuple[bool, str | None]:
    """(correct, extracted answer). With `boxed_required` only a \\boxed{} answer counts."""
    answer = last_boxed(text) if boxed_required else extract_answer(text)
    return reward(text, gold, boxed_required=boxed_required) > 0, answer


def _math_equal(a: str, b: str) -> bool:
    return equivalent(a, b)


def evaluate_dataset(name: str, records: Sequence[dict], prompts: Sequence[str], generate: Generate,
                     ev: EvalSection, *, seed: int = 0, chunk: int = 256,
                     equal: Equal = _math_equal) -> tuple[dict, list[dict]]:
    """Generate and score every pass on one dataset: (metrics per pass, one row per response).

    `chunk` problems go to `generate` per call (the progress bar moves per call); `equal`
    clusters answers for maj@k (math equivalence by default).
    """
    result: dict = {"problems": len(records)}
    rows: list[dict] = []
    for mode, n, temperature in passes(ev):
        scored: list[list[Scored]] = []
        gen_seconds, correct, tokens = 0.0, 0, 0
        bar = Progress(len(records), f"{name} {mode}")
        for start in range(0, len(records), chunk):
            batch = list(prompts[start:start + chunk])
            t0 = time.perf_counter()
            # A distinct seed per call: the engine folds only the prompt's index within the call.
            out = generate(batch, n=n, temperature=temperature, seed=seed * 1_000_003 + start)
            gen_seconds += time.perf_counter() - t0
            if len(out) != len(batch) or any(len(r) != n for r in out):
                raise RuntimeError(f"generate returned {[len(r) for r in out]} responses for "
                                   f"{len(batch)} prompts x n={n}")
            for i, responses in enumerate(out):
                record, problem = records[start + i], []
                for j, resp in enumerate(responses):
                    ok, answer = score_response(resp.text, record["answer"], ev.boxed_required)
                    problem.append(Scored(ok, answer, resp.length, resp.finish_reason))
                    rows.append({"id": record["id"], "mode": mode, "sample": j, "prompt": batch[i],
                                 "response": resp.text, "extracted": answer, "gold": record["answer"],
                                 "correct": ok, "finish_reason": resp.finish_reason, "length": resp.length})
                    correct, tokens = correct + ok, tokens + resp.length
                scored.append(problem)
            done = len(scored) * n
            bar.update({"reward/accuracy": correct / done, "response/length_mean": tokens / done},
                       n=len(out))
        bar.close()
        ks = ev.k if mode == "sampled" else (1,)
        metrics = aggregate(scored, ks, majority=mode == "sampled", equal=equal)
        metrics.update(temperature=temperature, generate_seconds=round(gen_seconds, 3),
                       tokens_per_s=tokens / gen_seconds if gen_seconds > 0 else 0.0)
        result[mode] = metrics
    return result, rows


# ---------------------------------------------------------------------------------------------
# Generation through the engine


class EngineGenerator:
    """Prompts through one `rlx.engine.Engine` sized for them, by the shared path of
    `rlx.generate` (the one training uses).

    The engine's prompt length is the longest of `prompts` rounded up to a power of two and
    its cache adds `max_new_tokens`, so every dataset of a run shares one set of compiled
    functions; memory scales with `slots` (engine.max_concurrent_decodes) times that length.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, slots: int,
                 steps_per_sync: int = 8, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
                 stop: Sequence[str] = ()):
        from rlx.engine import Engine, EngineConfig
        from rlx.generate import Prompter

        self.tokenizer, self.prompter = tokenizer, Prompter(tokenizer)
        self.max_new_tokens, self.stop = max_new_tokens, tuple(stop)
        self.filters = {"top_p": top_p, "top_k": top_k, "min_p": min_p}
        longest = max(len(self.prompter.encode(p)) for p in prompts)
        prefill = 1 << max(4, (longest - 1).bit_length())
        self.engine = Engine(model, EngineConfig(
            max_concurrent_decodes=slots, max_prefill_length=prefill, steps_per_sync=steps_per_sync,
            max_cache_len=prefill + max_new_tokens, eos_ids=tuple(tokenizer.eos_ids)))

    def __call__(self, prompts: Sequence[str], *, n: int, temperature: float, seed: int) -> list[list[Response]]:
        from rlx.engine import SamplingConfig
        from rlx.generate import generate

        sampling = SamplingConfig(temperature=temperature, **self.filters)  # greedy ignores the filters
        gen = generate(self.engine, self.tokenizer, [self.prompter.encode(p) for p in prompts], n=n,
                       max_new_tokens=self.max_new_tokens, sampling=sampling, seed=seed, stop=self.stop)
        lengths = gen.rollouts.response_mask.sum(axis=1)
        flat = [Response(text, str(reason), int(length))
                for text, length, reason in zip(gen.texts, lengths, gen.rollouts.finish_reason)]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]  # rows are prompt-major


def build_tokenizer_for(cfg: Config, model, texts: Sequence[str], run_dir: Path):
    """The configured tokenizer; for a random-weight preset without one, one trained on `texts`.

    A random model has no tokenizer of its own and any tokenizer gives it the same (chance)
    score, so training a small sentencepiece model on the prompts keeps such a config runnable.
    """
    from rlx.build import build_tokenizer
    from rlx.models.tokenizer import train_sentencepiece

    vocab = model.config.vocab_size
    if cfg.tokenizer.path or cfg.model.hf_path:
        tok = build_tokenizer(cfg.tokenizer, cfg.model)
    else:
        where = run_dir / "tokenizer" if is_chief() else Path(tempfile.mkdtemp())
        tok = train_sentencepiece(texts, where, vocab_size=min(vocab, 1024))
        print(f"rlx eval: model.preset={cfg.model.preset} has random weights and tokenizer.path is "
              f"empty; trained a {tok.vocab_size}-piece sentencepiece tokenizer on the prompts ({where}). "
              "Scores measure the harness, not a model.")
    if tok.vocab_size > vocab:
        raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {vocab}; "
                          "point tokenizer.path at the model's own tokenizer")
    return tok


# ---------------------------------------------------------------------------------------------
# Reports and the job


def format_markdown(results: dict, ev: EvalSection) -> str:
    """The results table: one row per dataset, percentages with one decimal."""
    modes = [m for m, _, _ in passes(ev)]
    cols: list[tuple[str, str, str]] = []  # (header, mode, metric)
    for mode in modes:
        label = "greedy " if mode == "greedy" else ""
        metrics = ["pass@1"] if mode == "greedy" else [f"pass@{k}" for k in ev.k] + [f"maj@{k}" for k in ev.k]
        cols += [(label + m, mode, m) for m in metrics]
        cols += [(f"{mode} len", mode, "mean_response_len"), (f"{mode} trunc %", mode, "truncation_rate")]
    lines = ["| dataset | problems | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for name, res in results.items():
        cells = [f"{res[mode][key]:.0f}" if key == "mean_response_len" else f"{100 * res[mode][key]:.1f}"
                 for _, mode, key in cols]
        lines.append(f"| {name} | {res['problems']} | " + " | ".join(cells) + " |")
    sampling = (f"sampled: n={ev.n}, temperature={ev.temperature}, top_p={ev.top_p}, top_k={ev.top_k}, "
                f"min_p={ev.min_p}; " if "sampled" in modes else "")
    note = (f"\n{sampling}max_new_tokens={ev.max_new_tokens}; pass@k: unbiased estimator over n samples; "
            "maj@k: majority vote over disjoint blocks of k samples (see rlx/eval_metrics.py); "
            "pass/maj/trunc in %, len in tokens.\n")
    return "\n".join(lines) + "\n" + note


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    if is_chief():
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cfg: Config) -> dict:
    """The eval job: results.json, results.md and samples_<dataset>.jsonl in `cfg.run_dir`."""
    from rlx.build import build_mesh, build_model
    from rlx.generate import stop_rules

    ev = cfg.eval
    check_eval_section(ev)
    datasets = load_datasets(ev.datasets, cfg.data, ev.limit)
    prompts = {name: [build_prompt(r["question"], cfg.data.template, cfg.tokenizer.chat_style)
                      for r in records] for name, records in datasets.items()}
    run_dir = prepare_run_dir(cfg.run_dir, dump_yaml(cfg))
    model = build_model(cfg.model, seed=cfg.run.seed, mesh=build_mesh(cfg.mesh))
    every_prompt = [p for ps in prompts.values() for p in ps]
    tokenizer = build_tokenizer_for(cfg, model, every_prompt, run_dir)
    generate = EngineGenerator(model, tokenizer, every_prompt, max_new_tokens=ev.max_new_tokens,
                               slots=cfg.engine.max_concurrent_decodes, steps_per_sync=cfg.engine.steps_per_sync,
                               top_p=ev.top_p, top_k=ev.top_k, min_p=ev.min_p,
                               stop=stop_rules(cfg.engine.stop, cfg.tokenizer.chat_style, cfg.data.template))
    # A few engine-fulls per call: the bar moves often and continuous batching stays busy.
    chunk = max(1, 4 * cfg.engine.max_concurrent_decodes // ev.n)
    summary = {"model": cfg.model.hf_path or f"preset:{cfg.model.preset}", "template": cfg.data.template,
               "chat_style": cfg.tokenizer.chat_style, "eval": to_dict(ev), "datasets": {}}
    for name, records in datasets.items():
        result, rows = evaluate_dataset(name, records, prompts[name], generate, ev, seed=cfg.run.seed, chunk=chunk)
        summary["datasets"][name] = result
        _write_jsonl(run_dir / f"samples_{_file_safe(name)}.jsonl", rows)
        write_json(run_dir / "results.json", summary)  # after each dataset: a crash keeps the finished ones
    table = format_markdown(summary["datasets"], ev)
    if is_chief():
        (run_dir / "results.md").write_text(f"# {cfg.run.name}: {summary['model']}\n\n{table}")
        print(table, end="")
    return summary
