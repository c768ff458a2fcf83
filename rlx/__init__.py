"""rlx: JAX-native reinforcement learning for post-training language models to reason."""

__version__ = "0.1.0"
