"""The rlx Engine (JetStream Engine API), sampling, stop rules and the rollout driver."""

from rlx.engine.engine import Engine
from rlx.engine.driver import Rollouts, default_engine_config, rollout
from rlx.engine.sampling import SamplingConfig, token_logprobs
from rlx.engine.state import DecodeState, EngineConfig, Prefix, ResultTokens, SlotData
from rlx.engine.stops import CODE_BLOCK_STOP, STEP_STOP, StopChecker

__all__ = ["CODE_BLOCK_STOP", "STEP_STOP", "DecodeState", "Engine", "EngineConfig", "Prefix", "ResultTokens",
           "Rollouts", "SamplingConfig", "SlotData", "StopChecker", "default_engine_config", "rollout",
           "token_logprobs"]
