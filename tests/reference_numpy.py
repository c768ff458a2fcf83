"""Float64 NumPy transcriptions of ALGORITHMS.md, written from the text (and, where it defers to
the reference code, from that code's loops), independently of rlx.kernels.

Deliberately naive: Python dicts of groups and explicit time loops, like the reference
implementations, so they check the vectorised kernels rather than mirror them.
"""

import math
from collections import defaultdict

import numpy as np


def _groups(group_ids):
    groups = defaultdict(list)
    for i, g in enumerate(group_ids):
        if g >= 0:
            groups[int(g)].append(i)
    return groups


def _tile(a, mask, group_ids):
    out = np.asarray(a, np.float64)[:, None] * np.asarray(mask, np.float64)
    out[np.asarray(group_ids) < 0] = 0.0
    return out


def _valid_mask(mask, group_ids):
    m = np.asarray(mask, np.float64).copy()
    m[np.asarray(group_ids) < 0] = 0.0
    return m


# ----------------------------------------------------------------------------- section 1


def masked_whiten(x, mask):
    x = np.asarray(x, np.float64)
    m = np.asarray(mask, np.float64)
    n = m.sum()
    if n <= 1:
        raise ValueError("N <= 1")
    mu = (x * m).sum() / (n + 1e-8)
    var = (((x - mu) ** 2) * m).sum() / (n + 1e-8) * n / (n - 1)
    return (x - mu) / np.sqrt(var + 1e-8)


def grpo(s, mask, group_ids, eps=1e-6, norm_by_std=True):
    s = np.asarray(s, np.float64)
    a = np.zeros_like(s)
    for idx in _groups(group_ids).values():
        vals = s[idx]
        if len(idx) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = vals.mean(), vals.std(ddof=1)
        if len(idx) > 1 and np.all(vals == vals[0]):
            a[idx] = 0.0
        elif norm_by_std:
            a[idx] = (vals - mean) / (std + eps)
        else:
            a[idx] = vals - mean
    return _tile(a, mask, group_ids)


def rloo(s, mask, group_ids):
    s = np.asarray(s, np.float64)
    a = np.zeros_like(s)
    for idx in _groups(group_ids).values():
        n = len(idx)
        for i in idx:
            if n == 1:
                a[i] = s[i]
            else:
                a[i] = s[i] - (sum(s[j] for j in idx) - s[i]) / (n - 1)
    return _tile(a, mask, group_ids)


def reinforce_pp(r, mask, group_ids, gamma):
    r = np.asarray(r, np.float64)
    m = _valid_mask(mask, group_ids)
    B, L = r.shape
    G = np.zeros_like(r)
    for b in range(B):
        running = 0.0
        for t in reversed(range(L)):  # the return carries across masked positions
            running = r[b, t] * m[b, t] + gamma * running
            G[b, t] = running
    return masked_whiten(G, m) * m, G * m


def reinforce_pp_baseline(s, mask, group_ids):
    c = grpo(s, np.ones((len(s), 1)), group_ids, norm_by_std=False)[:, 0]
    m = _valid_mask(mask, group_ids)
    return masked_whiten(c[:, None] * m, m) * m


def gae(r, v, mask, gamma, lam, whiten=True):
    r = np.asarray(r, np.float64)
    v = np.asarray(v, np.float64)
    m = np.asarray(mask, np.float64)
    B, L = r.shape
    adv = np.zeros_like(r)
    for b in range(B):
        next_v, next_a = 0.0, 0.0
        for t in reversed(range(L)):
            delta = r[b, t] + gamma * next_v - v[b, t]
            a = delta + gamma * lam * next_a
            if m[b, t] > 0:
                next_v, next_a = v[b, t], a
            adv[b, t] = next_a
    returns = (adv + v) * m
    if whiten:
        adv = masked_whiten(adv, m)
    return adv * m, returns


def w_reinforce(s, mask, group_ids, lam=0.1, mode="weighted"):
    s = np.asarray(s, np.float64)
    correct = s > 0
    if mode == "weighted":
        a = np.where(correct, lam, -1.0)
    elif mode == "psr":
        a = np.where(correct, 1.0, 0.0)
    else:
        a = np.where(correct, 0.0, -1.0)
    return _tile(a, mask, group_ids)


# ----------------------------------------------------------------------------- section 2


def ppo_clip(logp, old, adv, eps_low, eps_high, c=3.0):
    logp, old, adv = (np.asarray(x, np.float64) for x in (logp, old, adv))
    ratio = np.exp(np.clip(logp - old, -20, 20))
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - eps_low, 1 + eps_high)
    lc = np.maximum(l1, l2)
    out = lc.copy()
    dual = np.zeros_like(lc)
    if c is not None:
        for idx in np.ndindex(lc.shape):
            if adv[idx] < 0:
                out[idx] = min(lc[idx], -c * adv[idx])
                dual[idx] = float(lc[idx] > -c * adv[idx])
    high = ((ratio > 1 + eps_high) & (adv > 0)).astype(np.float64)
    low = ((ratio < 1 - eps_low) & (adv < 0)).astype(np.float64)
    return out, ratio, high, low, dual


def kl(lp, rlp, kind):
    lp, rlp = np.asarray(lp, np.float64), np.asarray(rlp, np.float64)
    if kind == "k1":
        return lp - rlp
    if kind == "k2":
        return 0.5 * (lp - rlp) ** 2
    d = np.clip(rlp - lp, -20, 20)
    return np.clip(np.exp(d) - d - 1, -10, 10)


def adaptive_kl(coef, current, n_steps, target, horizon):
    err = min(max(current / target - 1, -0.2), 0.2)
    return coef * (1 + err * n_steps / horizon)


def log_softmax(z):
    z = np.asarray(z, np.float64)
    zmax = z.max(-1, keepdims=True)
    return z - zmax - np.log(np.exp(z - zmax).sum(-1, keepdims=True))


def entropy(logits, temperature=1.0):
    lp = log_softmax(np.asarray(logits, np.float64) / temperature)
    return -(np.exp(lp) * lp).sum(-1)


def token_logprobs(logits, tokens, temperature=1.0):
    lp = log_softmax(np.asarray(logits, np.float64) / temperature)
    return np.take_along_axis(lp, np.asarray(tokens)[..., None], -1)[..., 0]


# ----------------------------------------------------------------------------- section 3


def aggregate(mode, loss, mask, max_len=None):
    loss, m = np.asarray(loss, np.float64), np.asarray(mask, np.float64)
    if mode == "token-mean":
        return (loss * m).sum() / m.sum()
    if mode == "seq-mean-token-sum-norm":
        return (loss * m).sum() / ((m.sum(1) > 0).sum() * max_len)
    per_seq = []
    for b in range(loss.shape[0]):
        if m[b].sum() == 0:
            continue
        tok_sum = (loss[b] * m[b]).sum()
        per_seq.append(tok_sum / m[b].sum() if mode == "seq-mean-token-mean" else tok_sum)
    return float(np.mean(per_seq))


# ----------------------------------------------------------------------------- section 4


def _last_index(mrow):
    nz = np.nonzero(mrow)[0]
    return None if len(nz) == 0 else int(nz[-1])


def prime_rewards(lp_prm, lp_ref, mask, beta, granularity="token"):
    q = (np.asarray(lp_prm, np.float64) - np.asarray(lp_ref, np.float64)) * mask
    r = beta * q
    if granularity == "whole":
        out = np.zeros_like(r)
        for b in range(r.shape[0]):
            last = _last_index(mask[b])
            if last is not None:
                out[b, last] = r[b].sum()
        r = out
    return r


def prime_bce(lp_prm, lp_ref, mask, acc, beta):
    q = (np.asarray(lp_prm, np.float64) - np.asarray(lp_ref, np.float64)) * mask
    total = 0.0
    for b in range(q.shape[0]):
        p = 1.0 / (1.0 + math.exp(-beta * q[b].sum()))
        total += -(acc[b] * math.log(p) + (1 - acc[b]) * math.log(1 - p))
    return total, float(q.shape[0])


def prime_batch_norm(r, mask):
    r = np.asarray(r, np.float64) * mask
    rc = np.flip(np.cumsum(np.flip(r, 1), 1), 1)
    return r / (np.abs(rc).max() + 1e-6)


def prime_advantages(r, acc, mask, group_ids, wp=5.0, wo=5.0):
    r = np.asarray(r, np.float64)
    m = _valid_mask(mask, group_ids)
    B, L = r.shape
    proc = np.zeros_like(r)
    outc = np.zeros_like(r)
    for idx in _groups(group_ids).values():
        n = len(idx)
        mus = [(r[i] * m[i]).sum() / m[i].sum() if m[i].sum() > 0 else 0.0 for i in idx]
        # The outcome source's "tokens" are the last token only; an empty row has none (mean 0).
        accs = [acc[i] if m[i].sum() > 0 else 0.0 for i in idx]
        for k, i in enumerate(idx):
            for t in range(L):
                if m[i, t] > 0:
                    proc[i, t] = r[i, t] * n / (n - 1) - sum(mus) / (n - 1) if n > 1 else r[i, t]
            last = _last_index(m[i])
            if last is not None:
                outc[i, last] = acc[i] * n / (n - 1) - sum(accs) / (n - 1) if n > 1 else acc[i]
    total = (wp * proc + wo * outc) * m
    returns = np.zeros_like(total)
    for b in range(B):
        run = 0.0
        for t in reversed(range(L)):
            run += total[b, t]
            returns[b, t] = run
    return masked_whiten(returns, m) * m, returns * m


def accuracy_band(acc, group_ids, low, high, truncated=None, drop_truncated=False):
    keep = np.zeros(len(acc), bool)
    for idx in _groups(group_ids).values():
        mean = sum(float(acc[i]) for i in idx) / len(idx)
        ok = low <= mean <= high
        if drop_truncated and any(truncated[i] for i in idx):
            ok = False
        keep[idx] = ok
    return keep


# ----------------------------------------------------------------------------- section 5


def empo(answers_by_row, group_ids):
    """answers_by_row: strings ('' = empty). Exact string match clusters; returns (r, H)."""
    r = np.zeros(len(answers_by_row))
    H = np.zeros(len(answers_by_row))
    for idx in _groups(group_ids).values():
        G = len(idx)
        clusters = []
        for i in idx:
            a = answers_by_row[i]
            for c in clusters:
                if a != "" and answers_by_row[c[0]] == a:
                    c.append(i)
                    break
            else:
                clusters.append([i])
        p = {i: len(c) / G for c in clusters for i in c}
        h = -sum(len(c) / G * math.log(len(c) / G) for c in clusters)
        for i in idx:
            H[i] = h
            r[i] = p[i] if (h < math.log(G) - 1e-12 and answers_by_row[i] != "") else 0.0
    return r, H


# ----------------------------------------------------------------------------- section 6


def softmin_weights(pr, T):
    z = -np.asarray(pr, np.float64) / T
    e = np.exp(z - z.max())
    return e / e.sum()


def pure_advantages(step_rewards, step_ends, vr, mask, group_ids, vr_coef=1.0,
                    zero_step_ends=False, baseline="step"):
    """step_rewards[b]: list of r_k; step_ends[b]: list of positions; vr: array or None.

    baseline "step": each response's mean step reward, subtracted on its step ends; "token"
    (PURE's code): the other responses' total reward over their total token count, times each
    step's length e_k - e_{k-1} (e_0 = 0), subtracted on that step's end.
    """
    m = _valid_mask(mask, group_ids)
    B, L = m.shape
    avg = np.zeros(B)
    for b in range(B):
        if step_rewards[b]:
            avg[b] = sum(step_rewards[b]) / len(step_rewards[b])
    tok = np.zeros((B, L))
    ends = np.zeros((B, L))
    for idx in _groups(group_ids).values():
        n = len(idx)
        for i in idx:
            base = (sum(avg[j] for j in idx) - avg[i]) / (n - 1) if n > 1 else 0.0
            others = [j for j in idx if j != i]
            other_len = sum(m[j].sum() for j in others)
            per_token = sum(sum(step_rewards[j]) for j in others) / other_len if others and other_len else 0.0
            previous = 0
            for rk, e in zip(step_rewards[i], step_ends[i]):
                if baseline == "step":
                    tok[i, e] += rk - base
                else:
                    tok[i, e] += rk - per_token * (e - previous)
                previous = e
                ends[i, e] = 1.0
            if vr is not None:
                vbase = (sum(vr[j] for j in idx) - vr[i]) / (n - 1) if n > 1 else 0.0
                last = _last_index(m[i])
                if last is not None:
                    tok[i, last] += vr_coef * (vr[i] - vbase)
    returns = np.zeros((B, L))
    for b in range(B):
        run = 0.0
        for t in reversed(range(L)):
            run += tok[b, t] * m[b, t]
            returns[b, t] = run
    if zero_step_ends:
        returns = returns * (1 - ends)
    return pure_whiten(returns, m, ends if zero_step_ends else None), returns * m


def pure_whiten(x, mask, step_ends=None):
    """PURE's replay-buffer normalisation: population variance; with zeroed step ends, those
    tokens leave the count and the mean but their squared deviation stays in the variance sum."""
    x = np.asarray(x, np.float64)
    m = np.asarray(mask, np.float64)
    counted = m if step_ends is None else m * (1 - np.asarray(step_ends, np.float64))
    n = counted.sum()
    if n == 0:
        return np.zeros_like(x)
    mu = (x * counted).sum() / n
    var = ((x - mu) ** 2 * m).sum() / n
    return (x - mu) / np.sqrt(max(var, 1e-8)) * counted


# ----------------------------------------------------------------------------- section 7


def find_infinite_loop_start(token_ids, min_repeats=2):
    """Literal transcription of MiroMind-M1's loop detector (lists, no shortcuts)."""
    token_ids = list(token_ids)
    n = len(token_ids)
    longest_valid_length = 0
    start_of_loop = n
    for length in range(1, n // min_repeats + 1):
        count = 1
        right = n - length
        while right - length >= 0:
            if token_ids[right - length:right] == token_ids[right:right + length]:
                count += 1
            else:
                break
            right -= length
        if count >= min_repeats:
            longest_valid_length = length
            start_of_loop = right
    if longest_valid_length == 0:
        return 0.0
    return (n - start_of_loop) / n


# ----------------------------------------------------------------------------- section 9


def mean_entropy(logits, mask, T):
    h = entropy(logits, T)
    m = np.asarray(mask, np.float64)
    return (h * m).sum() / (m.sum() + 1e-8)


# ----------------------------------------------------------------------------- DAPO


def soft_overlong_penalty(lengths, max_len, buffer, factor=1.0):
    out = []
    for y in np.asarray(lengths, np.float64):
        if y <= max_len - buffer:
            out.append(0.0)
        elif y <= max_len:
            out.append(((max_len - buffer) - y) / buffer)
        else:
            out.append(-1.0)
    return factor * np.asarray(out)
