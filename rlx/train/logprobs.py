"""Response log-probs and entropy from the final hidden states, one sequence chunk at a time.

The float32 logits of a whole response are [B, R, V] with V = 151,936 for Qwen: several
copies of them (log-softmax, its cotangent, entropy) would dominate the update's memory and
grow with the response length. Here the unembedding, log-softmax and entropy run under one
`lax.scan` over chunks of `chunk` positions, each chunk rematerialised in the backward pass,
so at most one chunk's [B, chunk, V] logits is alive at a time and what the backward pass
keeps per token is the hidden state alone. The math per token is `rlx.kernels.policy_loss`'s.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rlx.kernels.policy_loss import entropy_from_logits, token_logprobs
from rlx.mesh import with_logical_constraint
from rlx.models.transformer import unembed


def _stats(hidden_BxCxD, w_DxV, tokens_BxC, temperature, entropy: bool, entropy_grad: bool):
    hidden_BxCxD = with_logical_constraint(hidden_BxCxD, ("batch", "seq", "embed"))
    logits_BxCxV = unembed(hidden_BxCxD, w_DxV)
    logp_BxC = token_logprobs(logits_BxCxV, tokens_BxC, temperature)
    if not entropy:
        return logp_BxC, jnp.zeros_like(logp_BxC)
    entropy_BxC = entropy_from_logits(logits_BxCxV, temperature)
    # Stopped inside the chunk, so the backward pass does not differentiate it with zeros.
    return logp_BxC, entropy_BxC if entropy_grad else jax.lax.stop_gradient(entropy_BxC)


def token_stats(hidden_BxTxD, w_DxV, tokens_BxT, temperature, chunk: int, *, entropy: bool = True,
                entropy_grad: bool = False):
    """(log p(token), entropy) per position, both [B, T] float32, of softmax(hidden @ w / T).

    `chunk` (static) positions per scan step; 0 or >= T computes the whole sequence at once,
    without rematerialisation. With `entropy=False` the entropy is zeros and costs nothing;
    it carries a gradient only with `entropy_grad=True` (an entropy bonus in the loss).
    """
    batch, seq, d = hidden_BxTxD.shape
    if chunk <= 0 or chunk >= seq:
        return _stats(hidden_BxTxD, w_DxV, tokens_BxT, temperature, entropy, entropy_grad)
    # Equal chunks of ceil(T / n) positions: the padding is under n positions, not under chunk.
    n = -(-seq // chunk)
    size = -(-seq // n)
    pad = n * size - seq
    hidden_NxBxCxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(batch, n, size, d).swapaxes(0, 1)
    tokens_NxBxC = jnp.pad(tokens_BxT, ((0, 0), (0, pad))).reshape(batch, n, size).swapaxes(0, 1)
    # Default policy: nothing inside a chunk is saved, the backward pass recomputes its logits.
    body = jax.checkpoint(functools.partial(_stats, entropy=entropy, entropy_grad=entropy_grad))

    def step(_, xs):
        return None, body(xs[0], w_DxV, xs[1], temperature)

    _, (logp_NxBxC, ent_NxBxC) = jax.lax.scan(step, None, (hidden_NxBxCxD, tokens_NxBxC))

    def unchunk(x_NxBxC):
        return x_NxBxC.swapaxes(0, 1).reshape(batch, n * size)[:, :seq]

    return unchunk(logp_NxBxC), unchunk(ent_NxBxC)


def response_token_stats(model, batch: dict, temperature, *, entropy: bool = True, entropy_grad: bool = False):
    """(log-probs, entropy) [B, R] of the `R = response_mask.shape[1]` response tokens.

    Only the hidden states that predict the response (columns P-1 .. P+R-2) are unembedded,
    in chunks of `model.config.logits_chunk` positions.
    """
    width = batch["response_mask"].shape[1]
    hidden_BxTxD = model.hidden_states(batch["ids"], batch["positions"], batch["mask"])
    return token_stats(hidden_BxTxD[:, -width - 1:-1], model.unembed_weight(), batch["ids"][:, -width:],
                       temperature, model.config.logits_chunk, entropy=entropy, entropy_grad=entropy_grad)
