"""The full GRPO update step (PPO-clip loss + grad + clipping + AdamW), rlx vs PyTorch.

Both sides see the same weights and the same batch: sequences of `seq` tokens whose last
`response` tokens are the response, with sampler log-probs and advantages drawn at random.
Imported by `benchmarks/train_step.py`, which prints the rows.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models import Transformer, to_hf
from rlx.train.optim import adamw, init_state
from rlx.train.update import LossSpec, train_step


def grpo_batch(vocab: int, batch: int, seq: int, response: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int32)
    resp_mask = np.ones((batch, response), np.int32)
    resp_mask[:, response * 3 // 4:] = rng.random((batch, response - response * 3 // 4)) < 0.5
    return {"ids": rng.integers(0, vocab, (batch, seq)).astype(np.int32), "mask": mask,
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "response_mask": resp_mask, "old_logp": rng.normal(-10.0, 0.5, (batch, response)).astype(np.float32),
            "ref_logp": np.zeros((batch, response), np.float32),
            "adv": np.repeat(rng.normal(size=(batch, 1)), response, 1).astype(np.float32)}


def bench_rlx_grpo_update(model: Transformer, batch: dict, timed, steps: int = 3) -> dict:
    """rlx's jitted `train_step`: token-mean PPO-clip loss, grad-norm clip 1.0, AdamW."""
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(jnp.copy, params)
    optimizer = adamw(1e-6, 1000, grad_clip=1.0)
    state = {"params": params, "opt": init_state(optimizer, params)}
    spec = LossSpec(agg="token-mean", max_len=batch["adv"].shape[1])
    device = jax.tree.map(jnp.asarray, batch)
    out = {}

    def run():
        state["params"], state["opt"], metrics = train_step(graphdef, optimizer, spec, state["params"],
                                                            state["opt"], device, jnp.float32(0.0), jnp.float32(1.0))
        out["loss"] = float(jax.block_until_ready(metrics["actor/loss"]))

    first_s, step_s = timed(run, steps)
    return dict(step_s=step_s, first_s=first_s, loss=out["loss"])


def bench_torch_grpo_update(model: Transformer, batch: dict, timed, steps: int = 3) -> dict:
    """The same update in PyTorch on the HF model written by `to_hf(model)`."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, tmp, dtype="float32")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-6, weight_decay=0.0)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    ids, width = t["ids"].long(), t["adv"].shape[1]
    resp_mask = t["response_mask"].float()
    out = {}

    def run():
        opt.zero_grad(set_to_none=True)
        logits = hf(ids, attention_mask=t["mask"], position_ids=t["positions"].long()).logits.float()
        logp = torch.log_softmax(logits[:, -width - 1:-1], -1).gather(-1, ids[:, -width:, None])[..., 0]
        ratio = torch.exp(torch.clamp(logp - t["old_logp"], -20, 20))
        adv = t["adv"]
        loss_tok = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2))
        loss = (loss_tok * resp_mask).sum() / resp_mask.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        out["loss"] = loss.item()

    first_s, step_s = timed(run, steps)
    return dict(step_s=step_s, first_s=first_s, loss=out["loss"])
