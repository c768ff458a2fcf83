"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

Used on its own (`python -m rlx.launch sft CONFIG`: the task's demonstrations -- built into
the arith task, or `data.response_field` of a jsonl / parquet set -- then the model exported to
`runs/<name>/final/`) and as the warm start before RL.
"""

from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from rlx.train import batch as layout
from rlx.train.optim import adamw, init_state
from rlx.train.update import score_logprobs


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # ends with EOS so the model learns to stop


def make_batch(examples: list[SFTExample], prompt_width: int, response_width: int) -> dict:
    p_ids, p_mask = layout.pad_prompts([list(e.prompt_ids) for e in examples], prompt_width)
    r_ids, r_mask = layout.pad_responses([list(e.response_ids) for e in examples], response_width)
    ids, mask, positions = layout.concat(p_ids, p_mask, r_ids, r_mask)
    return {"ids": ids, "mask": mask, "positions": positions, "response_mask": r_mask}


def sft_loss(params, graphdef, batch):
    """Mean negative log-likelihood of the response tokens."""
    logp_BxR = score_logprobs(graphdef, params, batch, 1.0)
    mask_BxR = batch["response_mask"].astype(jnp.float32)
    return -(logp_BxR * mask_BxR).sum() / jnp.maximum(mask_BxR.sum(), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def sft_step(graphdef, optimizer, params, opt_state, batch):
    loss, grads = jax.value_and_grad(sft_loss)(params, graphdef, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_sft(model: nnx.Module, examples: list[SFTExample], *, steps: int, batch_size: int,
              lr: float, warmup_steps: int = 0, seed: int = 0, progress=None) -> tuple[nnx.Module, list[float]]:
    """Train `model` in place of a copy; returns (trained model, loss per step)."""
    if not examples:
        raise ValueError("no SFT examples: the demonstration set is empty")
    prompt_width = max(len(e.prompt_ids) for e in examples)
    response_width = max(len(e.response_ids) for e in examples)
    graphdef, params = nnx.split(model)
    # Copy: the jitted step donates its inputs and the caller may still hold `model`.
    params = jax.tree.map(jnp.copy, params)
    optimizer = adamw(lr, steps, warmup_steps=warmup_steps, grad_clip=1.0)
    opt_state = init_state(optimizer, params)
    # Under the params' mesh, so the model's logical-axis constraints act on the activations.
    sharding = jax.tree.leaves(params)[0].sharding
    mesh = sharding.mesh if isinstance(sharding, NamedSharding) else None
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        chosen = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        batch = jax.tree.map(jnp.asarray, make_batch(chosen, prompt_width, response_width))
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            params, opt_state, loss = sft_step(graphdef, optimizer, params, opt_state, batch)
        losses.append(loss)
        if progress is not None:
            progress.update({"sft/loss": float(loss)} if step % 10 == 0 else {})
    return nnx.merge(graphdef, params), [float(x) for x in np.asarray(jnp.stack(losses))]


def examples_from_task(task) -> list[SFTExample]:
    """(prompt, response + EOS) token pairs from a task's demonstrations, the prompts built as
    training and evaluation build them."""
    eos = task.tokenizer.eos_id
    prompts = task.prompter.records([r for r, _ in task.demos])
    return [SFTExample(tuple(p), tuple(task.tokenizer.encode(text)) + (eos,)) for p, (_, text) in zip(prompts, task.demos)]


def run(cfg) -> dict:
    """The `sft` job: train on the task's demonstrations, log the loss, export the model."""
    import time

    from rlx import models
    from rlx.build import build_mesh, build_model
    from rlx.config import ConfigError, dump_yaml
    from rlx.metrics import MetricsWriter, Progress, is_chief, prepare_run_dir, write_json
    from rlx.train.task import build_task

    if cfg.sft.steps < 1:
        raise ConfigError(f"sft.steps={cfg.sft.steps}: the sft job needs at least one step")
    task = build_task(cfg)
    if not task.demos:
        raise ConfigError(f"data.task={cfg.data.task} has no demonstrations to train on; the built-in "
                          f"'arith' task has them, and a jsonl / parquet set needs data.response_field "
                          f"naming its response column")
    run_dir = prepare_run_dir(cfg.run_dir, dump_yaml(cfg))
    overrides = {"vocab_size": task.tokenizer.vocab_size} if cfg.data.task == "arith" else {}
    model = build_model(cfg.model, seed=cfg.run.seed, mesh=build_mesh(cfg.mesh), **overrides)
    progress = Progress(cfg.sft.steps, "SFT")
    t0 = time.perf_counter()
    model, losses = train_sft(model, examples_from_task(task), steps=cfg.sft.steps,
                              batch_size=cfg.sft.batch_size, lr=cfg.sft.lr, warmup_steps=cfg.sft.warmup_steps,
                              seed=cfg.run.seed, progress=progress)
    progress.close()
    writer = MetricsWriter(run_dir)
    for step, loss in enumerate(losses, start=1):
        writer.write(step, {"sft/loss": loss})
    writer.close()
    final_dir = run_dir / "final"
    if is_chief():
        models.to_hf(model, final_dir)
        task.tokenizer.save(final_dir)
    summary = {"sft_steps": len(losses), "sft_examples": len(task.demos), "sft_loss_first": losses[0],
               "sft_loss_last": float(np.mean(losses[-10:])), "wall_seconds": time.perf_counter() - t0,
               "final_model": str(final_dir)}
    write_json(run_dir / "summary.json", summary)
    if is_chief():
        print(f"SFT loss {losses[0]:.3f} -> {summary['sft_loss_last']:.3f} over {len(losses)} steps; "
              f"model: {final_dir}/ (evaluate: python -m rlx.launch eval CONFIG model.hf_path={final_dir})")
    return summary
