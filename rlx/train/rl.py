"""`python -m rlx.launch train CONFIG`: warm start (optional), evaluate, RL, evaluate, report."""

from __future__ import annotations

import json
import time

import numpy as np

from rlx import hostio
from rlx.build import build_mesh, build_model, model_options
from rlx.checkpoint import Checkpointer
from rlx.config import Config, ConfigError, dump_yaml, to_dict
from rlx.generate import generate
from rlx.metrics import MetricsWriter, Progress, is_chief, prepare_run_dir, write_json
from rlx.train import report
from rlx.train.sft import examples_from_task, train_sft
from rlx.train.task import Task, build_task, cache_dir
from rlx.train.trainer import RLTrainer


def heldout_accuracy(trainer: RLTrainer, records: list[dict], *, temperature: float, seed: int = 0) -> float:
    """Fraction of held-out problems answered correctly, greedy (temperature 0) or sampled with
    the rollout's filters; through the same prompts, engine, decoding and verifier as training."""
    if not records:
        return float("nan")
    # Temperature 0 is greedy: the sampler's mode then ignores top-k / top-p / min-p.
    gen = generate(trainer.engine, trainer.tokenizer, trainer.task.prompter.records(records), n=1,
                   max_new_tokens=trainer.max_new_tokens(), sampling=trainer.sampling(temperature), seed=seed,
                   stop=trainer.stop)
    _, correct, _, _ = trainer.rewards([records[g] for g in gen.rollouts.group_ids], gen.texts)
    return float(np.mean(correct))


def evaluate(trainer: RLTrainer, task: Task, seed: int) -> dict:
    """Held-out accuracy, greedy and sampled (at the configured rollout temperature, 1 if greedy)."""
    return {"greedy": heldout_accuracy(trainer, task.heldout, temperature=0.0),
            "sampled": heldout_accuracy(trainer, task.heldout, temperature=trainer.cfg.engine.temperature or 1.0,
                                        seed=seed)}


def warm_start(cfg: Config, model, task: Task, mesh=None, progress_desc: str = "SFT warm start"):
    """Short SFT on the task's demonstrations; cached, so a second run loads the weights."""
    from rlx import models

    cache = cache_dir(cfg, "sft", to_dict(cfg.model), to_dict(cfg.sft), to_dict(cfg.data), cfg.run.seed)
    if (cache / "config.json").exists():
        model = models.from_hf(cache, dtype=cfg.model.dtype, mesh=mesh, **model_options(cfg.model))
        return model, json.loads((cache / "sft.json").read_text())
    examples = examples_from_task(task)
    progress = Progress(cfg.sft.steps, progress_desc)
    t0 = time.perf_counter()
    model, losses = train_sft(model, examples, steps=cfg.sft.steps, batch_size=cfg.sft.batch_size,
                              lr=cfg.sft.lr, warmup_steps=cfg.sft.warmup_steps, seed=cfg.run.seed,
                              progress=progress)
    progress.close()
    info = {"sft_loss_first": losses[0], "sft_loss_last": float(np.mean(losses[-10:])),
            "sft_seconds": time.perf_counter() - t0, "sft_examples": len(examples)}
    host_model = on_host(model)  # collective: every process gathers, process 0 writes
    if is_chief():
        models.to_hf(host_model, cache)
        (cache / "sft.json").write_text(json.dumps(info))
    return model, info


def run(cfg: Config) -> dict:
    t_start = time.perf_counter()
    checkpointer = Checkpointer(cfg.run_dir / "checkpoints", keep=cfg.checkpoint.keep,
                                async_save=cfg.checkpoint.async_save)
    if not cfg.run.resume and checkpointer.latest_step() is not None:
        raise ConfigError(f"{cfg.run_dir} already holds checkpoints (latest step {checkpointer.latest_step()}) and "
                          f"run.resume=false would overwrite them; choose a new run.name, delete the "
                          f"directory, or set run.resume=true to continue that run")
    run_dir = prepare_run_dir(cfg.run_dir, dump_yaml(cfg))
    # Process 0 builds the task's cached artefacts (the tokenizer) first; the others load them.
    task = hostio.chief_first(lambda: build_task(cfg), "rlx-task")
    overrides = {"vocab_size": task.tokenizer.vocab_size} if cfg.data.task == "arith" else {}
    # Actor, reference and engine share one mesh; parameters are created in their shardings.
    mesh = build_mesh(cfg.mesh)
    model = build_model(cfg.model, seed=cfg.run.seed, mesh=mesh, **overrides)
    sft_info = {}
    if cfg.sft.steps and task.demos:
        model, sft_info = warm_start(cfg, model, task, mesh)
    trainer = RLTrainer(cfg, model, task, checkpointer=checkpointer)
    before_path = run_dir / "eval_before.json"
    resumed = cfg.run.resume and trainer.restore()
    if resumed and before_path.exists():
        before = json.loads(before_path.read_text())
    else:
        before = evaluate(trainer, task, cfg.run.seed)
        write_json(before_path, before)
    progress = Progress(cfg.trainer.steps, f"{cfg.algo.advantage.upper()} ", initial=trainer.state.step)
    if resumed:
        progress.write(f"resumed from step {trainer.state.step} in {checkpointer.directory}")
    writer = MetricsWriter(run_dir)
    history = report.load_history(run_dir) if resumed else []
    try:
        while trainer.state.step < cfg.trainer.steps:
            metrics = trainer.step()
            step = trainer.state.step
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
                metrics["eval/heldout_greedy"] = heldout_accuracy(trainer, task.heldout, temperature=0.0)
            writer.write(step, metrics)
            history.append({"step": step, **metrics})
            progress.update(metrics)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                trainer.save()
    finally:
        progress.close()
        writer.close()
    trainer.save(force=True)
    checkpointer.close()
    after = evaluate(trainer, task, cfg.run.seed)
    final_dir = run_dir / "final"
    final_model = trainer_model(trainer)
    if is_chief():
        from rlx import models

        models.to_hf(final_model, final_dir)
        task.tokenizer.save(final_dir)
    summary = {
        "heldout_accuracy_before": before["greedy"], "heldout_accuracy_after": after["greedy"],
        "heldout_sampled_accuracy_before": before["sampled"], "heldout_sampled_accuracy_after": after["sampled"],
        "heldout_size": len(task.heldout), "steps": trainer.state.step, "algo": cfg.algo.advantage,
        "wall_seconds": time.perf_counter() - t_start, "final_model": str(final_dir), **sft_info,
        "reward_curve": [h.get("reward/mean") for h in history],
    }
    write_json(run_dir / "summary.json", summary)
    if is_chief():
        report.plot_curves(history, before, after, run_dir / "curves.png")
        print(report.table(summary))
        print(f"results: {run_dir}/ (summary.json, curves.png, metrics.jsonl, tb/, checkpoints/, final/)")
    return summary


def trainer_model(trainer: RLTrainer):
    """The actor as a model whose weights are NumPy arrays on this host (a collective in a
    multi-process run: every process calls it, then process 0 writes the export)."""
    from flax import nnx

    return nnx.merge(trainer.graphdef, hostio.get(trainer.state.params))


def on_host(model):
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, hostio.get(state))
