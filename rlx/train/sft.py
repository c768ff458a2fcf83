"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

Used on its own (`python -m rlx.launch sft CONFIG`) and as the warm start before RL.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.train import batch as layout
from rlx.train.optim import adamw
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
    opt_state = optimizer.init(params)
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
        params, opt_state, loss = sft_step(graphdef, optimizer, params, opt_state, batch)
        losses.append(loss)
        if progress is not None:
            progress.update({"sft/loss": float(loss)} if step % 10 == 0 else {})
    return nnx.merge(graphdef, params), [float(x) for x in np.asarray(jnp.stack(losses))]
