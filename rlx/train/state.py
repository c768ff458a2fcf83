"""The RL run state: everything a step changes, in one place, checkpointed whole.

Device arrays (the actor's params and optimizer state, the PRM role's) and host scalars (step,
KL coefficient, rollout temperature, length stage, prompt-stream position) travel together: a
step reads the state and returns the next one, and a restored state continues exactly as the
uninterrupted run would have. Nothing else in the trainer changes during a run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlx.kernels.campo import LengthStage


@dataclasses.dataclass
class RLState:
    params: Any
    opt_state: Any
    # The PRM role's trainable state ({"params", "opt_state"}), {} when it has none.
    prm: dict
    step: int = 0
    kl_coef: float = 0.0
    # The rollout temperature: the one value the sampler, the scoring passes and the loss read.
    temperature: float = 1.0
    length_stage: LengthStage = LengthStage()
    # Prompt batches drawn so far (the stream is indexed by it, so this is its whole state).
    draws: int = 0

    def arrays(self) -> dict:
        """The device half, as saved (the PRM's keys are flat: checkpoints of earlier runs load)."""
        out = {"params": self.params, "opt_state": self.opt_state}
        if self.prm:
            out.update(prm_params=self.prm["params"], prm_opt_state=self.prm["opt_state"])
        return out

    def host(self) -> dict:
        """The JSON half."""
        return {"step": self.step, "kl_coef": self.kl_coef, "temperature": self.temperature,
                "length_stage": list(self.length_stage), "data": {"next_index": self.draws}}

    def restored(self, arrays: dict, host: dict) -> "RLState":
        prm = {"params": arrays["prm_params"], "opt_state": arrays["prm_opt_state"]} if self.prm else {}
        stage = host.get("length_stage")
        return RLState(params=arrays["params"], opt_state=arrays["opt_state"], prm=prm,
                       step=int(host["step"]), kl_coef=float(host["kl_coef"]),
                       temperature=float(host.get("temperature", self.temperature)),
                       length_stage=LengthStage(*stage) if stage else LengthStage(),
                       draws=int(host["data"]["next_index"]))
