"""DAPO's soft overlong punishment against its float64 transcription and a worked example."""

import jax
import numpy as np
import pytest

import reference_numpy as ref
from rlx.config import ConfigError, load_config
from rlx.kernels.dapo import soft_overlong_penalty


def test_worked_example():
    # L_max 20, buffer 4: no penalty up to 16 tokens, then -1/4 per token, -1 at the maximum.
    got = soft_overlong_penalty(np.array([10, 16, 17, 19, 20]), max_len=20, buffer=4)
    np.testing.assert_allclose(np.asarray(got), [0.0, 0.0, -0.25, -0.75, -1.0])


@pytest.mark.parametrize("use_jit", [False, True])
def test_matches_reference(use_jit):
    lengths = np.random.default_rng(0).integers(0, 40, size=64)
    fn = lambda y: soft_overlong_penalty(y, max_len=32, buffer=7, factor=0.5)  # noqa: E731
    got = (jax.jit(fn) if use_jit else fn)(lengths)
    np.testing.assert_allclose(np.asarray(got), ref.soft_overlong_penalty(lengths, 32, 7, 0.5), atol=1e-6)


def test_bad_buffer_is_a_config_error():
    with pytest.raises(ConfigError, match="algo.overlong_buffer=200"):
        load_config(None, ["algo.overlong_buffer=200", "engine.max_new_tokens=128"])
