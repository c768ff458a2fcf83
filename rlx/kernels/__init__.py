"""Pure, jittable RL math: advantages, policy losses, KL, entropy, aggregation, PRIME, PURE,
EMPO, CAMPO and temperature control. Kernels know nothing of models or configs.

ADVANTAGE_FNS maps an estimator name to a function with one calling convention
(see rlx.kernels.advantages):

    adv_BxL, returns_BxL = ADVANTAGE_FNS[name](*, mask_BxL, group_ids_B, scores_B=None,
                                               token_rewards_BxL=None, values_BxL=None, **hyper)

"prime" reads token_rewards_BxL as the implicit process rewards and scores_B as acc; "pure"
reads token_rewards_BxL as the min-form step rewards on step-end tokens, needs
step_end_mask_BxL, and reads scores_B as the verifiable reward in {-1, 0}.
"""

from rlx.kernels import (advantages, aggregation, campo, empo, policy_loss, prime, pure,
                         temperature)
from rlx.kernels.aggregation import AGGREGATIONS

ADVANTAGE_FNS = {
    **advantages.ESTIMATORS,
    "prime": prime.advantage_entry,
    "pure": pure.advantage_entry,
}

__all__ = [
    "ADVANTAGE_FNS",
    "AGGREGATIONS",
    "advantages",
    "aggregation",
    "campo",
    "empo",
    "policy_loss",
    "prime",
    "pure",
    "temperature",
]
