"""The RL loop on a very small model: exact resume, exact micro-batching, no recompilation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlx.build import build_model
from rlx.checkpoint import Checkpointer
from rlx.config import load_config
from rlx.train.task import build_task
from rlx.train.batch import StepBatch
from rlx.train.batch import assemble as _assemble
from rlx.train.trainer import RLTrainer, loss_spec
from rlx.train.update import train_step

SMALL = ["model.overrides={n_layers: 1, d_model: 64, n_heads: 4, n_kv_heads: 2, mlp_dim: 128}",
         "data.train_size=200", "data.heldout_size=8", "trainer.prompts_per_step=4", "algo.n=4",
         "engine.max_concurrent_decodes=16", "engine.max_new_tokens=16", "engine.max_prefill_length=32",
         "engine.max_cache_len=48", "engine.steps_per_sync=8", "trainer.steps=3", "optim.lr=1e-3",
         "rewards.workers=0", "checkpoint.async_save=false"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, SMALL + [f"run.out_dir={out}", "trainer.mini_batches=2"])
    task = build_task(cfg)
    return cfg, task


def _trainer(cfg, task, ckpt_dir=None):
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    ckpt = Checkpointer(ckpt_dir, keep=2, async_save=False) if ckpt_dir else None
    return RLTrainer(cfg, model, task, checkpointer=ckpt)


def interrupted(make, ckpt_dir, steps: int = 2):
    """A trainer from `make(ckpt_dir)` run `steps` steps and saved, and a second one restored
    from that checkpoint (not yet stepped): (first, resumed)."""
    first = make(ckpt_dir)
    for _ in range(steps):
        first.step()
    first.save(force=True)
    first.checkpointer.close()
    resumed = make(ckpt_dir)
    assert resumed.restore()
    return first, resumed


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_resume_is_bitwise_equal_to_uninterrupted(setup, tmp_path):
    cfg, task = setup
    straight = _trainer(cfg, task)
    for _ in range(3):
        straight.step()

    _, resumed = interrupted(lambda ckpt: _trainer(cfg, task, ckpt), tmp_path / "ckpt")
    assert resumed.state.step == 2
    resumed.step()
    assert_same_state(straight.state, resumed.state)


def assert_same_state(a, b):
    """Two RLStates bitwise equal, every field: arrays, counters, temperature, stage, stream."""
    assert (a.step, a.kl_coef, a.temperature, a.length_stage, a.draws) == \
        (b.step, b.kl_coef, b.temperature, b.length_stage, b.draws)
    for x, y in zip(_leaves(a.arrays()), _leaves(b.arrays()), strict=True):
        np.testing.assert_array_equal(x, y)


def test_steps_do_not_recompile(setup):
    cfg, task = setup
    trainer = _trainer(cfg, task)
    trainer.step()
    size = train_step._cache_size()
    trainer.step()
    trainer.step()
    assert train_step._cache_size() == size


def test_micro_batching_gives_the_same_update(setup):
    cfg, task = setup
    trainer = _trainer(cfg, task)
    B, P, R, V = 8, 6, 5, task.tokenizer.vocab_size
    rng = np.random.default_rng(0)
    mask = np.ones((B, P + R), np.int32)
    resp_mask = (rng.random((B, R)) < 0.8).astype(np.int32)
    resp_mask[3] = 0  # an empty response
    batch = {"ids": rng.integers(0, V, (B, P + R)).astype(np.int32), "mask": mask,
             "positions": np.broadcast_to(np.arange(P + R, dtype=np.int32), (B, P + R)).copy(),
             "response_mask": resp_mask, "old_logp": rng.normal(-3, 0.1, (B, R)).astype(np.float32),
             "ref_logp": np.zeros((B, R), np.float32), "adv": rng.normal(size=(B, R)).astype(np.float32)}
    batch = jax.tree.map(jnp.asarray, batch)
    results = []
    for micro in (1, 4):
        spec = dataclasses.replace(loss_spec(cfg, 1, R), micro_batches=micro, agg="seq-mean-token-mean")
        params = jax.tree.map(jnp.copy, trainer.state.params)
        sgd = optax.sgd(1.0)  # plain SGD: the update is the gradient itself, no Adam rescaling
        new, _, metrics = train_step(trainer.graphdef, sgd, spec, params, sgd.init(params), batch,
                                     jnp.float32(0.0), jnp.float32(1.0))
        results.append((_leaves(new), float(metrics["actor/loss"])))
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5, abs=1e-6)
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _step_batch(scores, n, offset=0):
    g = len(scores) // n
    return StepBatch(records=[{"id": offset + i} for i in range(g)],
                     prompt_ids=np.zeros((len(scores), 3), np.int32), prompt_mask=np.ones((len(scores), 3), np.int32),
                     response_ids=np.zeros((len(scores), 2), np.int32),
                     response_mask=np.ones((len(scores), 2), np.int32), logprobs=np.zeros((len(scores), 2)),
                     group_ids=np.repeat(np.arange(g), n), scores=np.asarray(scores, np.float32),
                     correct=np.asarray(scores, np.float32), truncated=np.zeros(len(scores), bool))


def test_dynamic_sampling_keeps_informative_groups_and_pads_the_rest():
    n = 2
    first = _step_batch([1, 1, 0, 1, 0, 0], n)          # groups: all-equal, mixed, all-equal
    second = _step_batch([0, 1, 1, 1, 1, 0], n, 10)     # mixed, all-equal, mixed
    keep1, keep2 = np.array([False, True, False]), np.array([True, False, True])
    out = _assemble([(first, keep1), (second, keep2)], want=3, n=n)
    assert [r["id"] for r in out.records] == [1, 10, 12]
    np.testing.assert_array_equal(out.group_ids, [0, 0, 1, 1, 2, 2])
    short = _assemble([(first, keep1)], want=3, n=n)
    np.testing.assert_array_equal(short.group_ids, [0, 0, -1, -1, -1, -1])
    assert short.response_mask[2:].sum() == 0 and short.response_mask[:2].sum() == 4


def test_a_fresh_run_never_overwrites_an_existing_runs_checkpoints(tmp_path):
    from rlx.config import ConfigError
    from rlx.train import rl

    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "run.name=taken", "run.resume=false"])
    ckpt = Checkpointer(cfg.run_dir / "checkpoints", async_save=False)
    ckpt.save(5, {"x": jnp.zeros(2)})
    ckpt.close()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        rl.run(cfg)
    assert Checkpointer(cfg.run_dir / "checkpoints").latest_step() == 5
    assert not (cfg.run_dir / "config.yaml").exists()
