"""Optimizer construction: AdamW with warmup + cosine (or constant) and global-norm clipping."""

from __future__ import annotations

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

SCHEDULES = ("cosine", "constant", "linear")


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine", min_lr_ratio: float = 0.0) -> optax.Schedule:
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule='{schedule}' is not one of {', '.join(SCHEDULES)}")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    warm = optax.linear_schedule(0.0 if warmup_steps else lr, lr, max(warmup_steps, 1))
    if schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr_ratio)
    elif schedule == "linear":
        main = optax.linear_schedule(lr, lr * min_lr_ratio, decay_steps)
    else:
        main = optax.constant_schedule(lr)
    return optax.join_schedules([warm, main], [warmup_steps]) if warmup_steps else main


def adamw(lr: float, total_steps: int, *, warmup_steps: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.0, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, grad_clip: float = 0.0) -> optax.GradientTransformation:
    """AdamW on a schedule; `grad_clip` > 0 clips the global gradient norm first."""
    sched = learning_rate_schedule(lr, total_steps, warmup_steps, schedule, min_lr_ratio)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts)


def init_state(optimizer: optax.GradientTransformation, params):
    """`optimizer.init(params)` with its scalars (step counts) replicated on the parameters' mesh.

    A jitted update returns them on that mesh; initialising them there as well keeps the first
    and second updates on one compiled program.
    """
    state = optimizer.init(params)
    sharding = jax.tree.leaves(params)[0].sharding
    if not isinstance(sharding, NamedSharding):
        return state
    on_mesh = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
                        else jax.device_put(x, on_mesh), state)


def actor_optimizer(cfg) -> optax.GradientTransformation:
    """The actor's AdamW for an RL run: `optim` section, one schedule step per optimizer update."""
    o, t = cfg.optim, cfg.trainer
    return adamw(o.lr, t.steps * t.mini_batches * t.epochs, warmup_steps=o.warmup_updates, schedule=o.schedule,
                 min_lr_ratio=o.min_lr_ratio, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                 grad_clip=o.grad_clip)


def prm_optimizer(cfg) -> optax.GradientTransformation:
    """The implicit PRM's AdamW: `prime` section, constant schedule (PRIME's recipe)."""
    p = cfg.prime
    return adamw(p.prm_lr, max(cfg.trainer.steps * cfg.trainer.mini_batches, 1), schedule="constant",
                 weight_decay=p.prm_weight_decay, grad_clip=p.prm_grad_clip)
