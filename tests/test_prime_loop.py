"""PRIME in the RL loop: the PRM learns, the prompt filter keeps the band, resume is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.build import build_model
from rlx.checkpoint import Checkpointer
from rlx.config import ConfigError, load_config
from rlx.train.optim import adamw
from rlx.train import prime
from rlx.train.batch import assemble as _assemble
from rlx.train.prm import PrmSpec, prm_bce, prm_train_step
from rlx.train.task import build_task
from rlx.train.trainer import RLTrainer
from rlx.train.update import score
from tests.test_rl_loop import SMALL, _leaves, _step_batch, assert_same_state

PRIME = SMALL + ["algo.advantage=prime", "prime.prm_lr=1e-3", "trainer.mini_batches=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, PRIME + [f"run.out_dir={out}"])
    return cfg, build_task(cfg)


def _trainer(cfg, task, ckpt_dir=None):
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    ckpt = Checkpointer(ckpt_dir, keep=2, async_save=False) if ckpt_dir else None
    return RLTrainer(cfg, model, task, checkpointer=ckpt)


def test_prm_update_lowers_the_bce_on_a_fixed_batch(setup):
    cfg, task = setup
    trainer = _trainer(cfg, task)
    B, P, R, V = 8, 5, 6, task.tokenizer.vocab_size
    rng = np.random.default_rng(0)
    resp_mask = (rng.random((B, R)) < 0.8).astype(np.int32)
    batch = {"ids": rng.integers(0, V, (B, P + R)).astype(np.int32), "mask": np.ones((B, P + R), np.int32),
             "positions": np.broadcast_to(np.arange(P + R, dtype=np.int32), (B, P + R)).copy(),
             "response_mask": resp_mask, "acc": np.array([1, 0, 0, 1, 1, 0, 1, 0], np.float32),
             "row_mask": np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)}  # two padding rows
    batch = jax.tree.map(jnp.asarray, batch)
    # Reference = the PRM's own start, so q = 0 and the BCE starts at log 2.
    batch["prm_ref_logp"] = score(trainer.graphdef, trainer.state.params, batch, 1.0)
    params = jax.tree.map(jnp.copy, trainer.state.params)
    opt = adamw(1e-3, 10, schedule="constant", grad_clip=10.0)
    state = opt.init(params)
    before = prm_bce(trainer.graphdef, params, batch, beta=0.05)
    assert before == pytest.approx(np.log(2), abs=1e-5)
    spec = PrmSpec(beta=0.05, micro_batches=2)
    for _ in range(3):
        params, state, metrics, _ = prm_train_step(trainer.graphdef, opt, spec, params, state, batch)
    after = prm_bce(trainer.graphdef, params, batch, beta=0.05)
    assert np.isfinite(float(metrics["prm/loss"])) and after < before - 1e-3


def test_filter_keeps_exactly_the_groups_in_the_band(setup):
    cfg, _ = setup
    n = 5
    cfg = load_config(None, PRIME + [f"algo.n={n}", "trainer.prompts_per_step=6", "trainer.mini_batches=1"])
    trainer = object.__new__(RLTrainer)  # the filters read only the config and the objective
    trainer.cfg, trainer.objective = cfg, prime.PRIME
    # Group mean accuracies 0, 0.2, 0.4, 0.6, 0.8, 1.0: the band [0.2, 0.8] is inclusive.
    acc = np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for k in range(6)])
    sb = _step_batch(acc, n)
    sb.truncated[n * 2] = True  # one truncated response in the 0.4 group
    np.testing.assert_array_equal(trainer.keep_groups(sb), [False, True, True, True, True, False])
    trainer.cfg = load_config(None, PRIME + [f"algo.n={n}", "trainer.prompts_per_step=6", "trainer.mini_batches=1",
                                             "prime.drop_truncated=true", "prime.acc_low=0.4"])
    np.testing.assert_array_equal(trainer.keep_groups(sb), [False, False, False, True, True, False])
    out = _assemble([(sb, trainer.keep_groups(sb))], want=6, n=n)
    assert [r["id"] for r in out.records][:2] == [3, 4] and (out.group_ids[2 * n:] == -1).all()
    sb.correct[0] = np.nan
    with pytest.raises(ValueError, match="gold answer"):
        trainer.keep_groups(sb)


def test_prime_config_errors_name_the_fix():
    # At load, before any model exists.
    with pytest.raises(ConfigError, match="prime.update"):
        load_config(None, PRIME + ["prime.update=during"])
    with pytest.raises(ConfigError, match="algo.n >= 2"):
        load_config(None, PRIME + ["algo.n=1", "trainer.mini_batches=1"])
    with pytest.raises(ConfigError, match="kl_in_reward"):
        load_config(None, PRIME + ["algo.kl_coef=0.01", "algo.kl_in_reward=true"])


def test_resume_with_a_prm_is_bitwise_equal_to_uninterrupted(setup, tmp_path):
    cfg, task = setup
    # The tiny untrained model solves nothing, so the band filter would drop every group;
    # without it the PRM trains on real (all-wrong) labels and the test has something to check.
    cfg = load_config(None, PRIME + [f"run.out_dir={cfg.run.out_dir}", "prime.filter=false"])
    straight = _trainer(cfg, task)
    metrics = [straight.step()]
    compiled = prm_train_step._cache_size()
    metrics += [straight.step() for _ in range(2)]
    assert prm_train_step._cache_size() == compiled  # no recompilation across steps
    assert all(np.isfinite(m["prm/loss"]) for m in metrics)

    first = _trainer(cfg, task, tmp_path / "ckpt")
    first.step()
    first.step()
    first.save(force=True)
    first.save(force=True)  # a final save at a step already saved is a no-op, not an error
    first.checkpointer.close()
    resumed = _trainer(cfg, task, tmp_path / "ckpt")
    assert resumed.restore() and resumed.state.step == 2
    resumed.step()
    assert set(resumed.state.arrays()) == {"params", "opt_state", "prm_params", "prm_opt_state"}
    assert_same_state(straight.state, resumed.state)
    # The PRM moved away from its start (the frozen reference).
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(straight.state.prm["params"]),
                                                         _leaves(straight.prm.ref_params)))


def test_update_before_scoring_with_the_old_policy_as_reference(setup):
    cfg, task = setup
    cfg = load_config(None, PRIME + [f"run.out_dir={cfg.run.out_dir}", "prime.filter=false",
                                     "prime.update=before", "prime.reference=old_policy"])
    trainer = _trainer(cfg, task)
    assert trainer.prm.ref_params is None
    metrics = trainer.step()
    # The loss is the update pass's (q = 0 there: PRM = actor = reference); the rewards come
    # from the updated PRM, so they are not zero.
    assert metrics["prm/loss"] == pytest.approx(np.log(2), abs=1e-3)
    assert metrics["prm/q_sum_mean"] != 0.0 and np.isfinite(metrics["actor/loss"])
