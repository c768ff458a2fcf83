"""Typed, frozen experiment configs: YAML plus dotted `key=value` overrides.

Every section is a frozen dataclass. Loading walks the dataclass tree, so an unknown or
misspelled key fails with the valid keys listed, and a value of the wrong type fails naming the
key and the expected type. Model code never sees this module: it takes a narrow `ModelConfig`.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlx.typed_tree import ConfigError, build, parse_override, set_dotted, to_dict


REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("train", "sft", "eval", "serve", "plan", "bench")
# A TPU slice as libtpu names it: generation, then chips per dimension (v5p:4x4x2).
TOPOLOGY_NAME = re.compile(r"^(v4|v5e|v5p|v6e):\d+(x\d+){1,2}(_twisted|_untwisted)?$")


@dataclass(frozen=True)
class RunConfig:
    name: str = "quickstart"
    kind: str = "train"
    out_dir: str = "runs"
    seed: int = 0
    # Resume from the latest checkpoint in the run directory when one exists.
    resume: bool = True


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"
    # A Hugging Face directory (config.json + *.safetensors); overrides `preset` when set.
    hf_path: str = ""
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    # Full-sequence attention: auto | xla | cudnn | splash (auto = splash on TPU, cudnn on GPU where
    # the shapes fit, else xla). Log-probs / entropy: sequence positions unembedded per chunk (0 = all).
    attention: str = "auto"
    logits_chunk: int = 256
    # Architecture overrides applied on top of the preset (e.g. {"n_layers": 2}).
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TokenizerSection:
    # A sentencepiece .model, a tokenizer.json or a directory holding one; empty = the task's own.
    path: str = ""
    chat_style: str = ""


@dataclass(frozen=True)
class DataSection:
    # "arith" is the built-in synthetic task; "jsonl" / "parquet" read `path`; or an eval-set name.
    task: str = "arith"
    path: str = ""
    question_field: str = "question"
    # "" = the set has no answers (label-free training such as EMPO; accuracy is then NaN).
    answer_field: str = "answer"
    # jsonl / parquet sets: the column of demonstration responses for SFT ("" = none).
    response_field: str = ""
    template: str = "plain"
    # Prompts longer than this many tokens are dropped (and counted) when the data loads;
    # 0 = engine.max_prefill_length, the longest prompt the engine takes.
    max_prompt_len: int = 0
    shuffle: bool = True
    # Built-in task only: how many problems to generate for training and held-out evaluation.
    train_size: int = 20000
    heldout_size: int = 256
    # Built-in task: operations per problem, and the demonstrator's imperfections -- the
    # fraction of demonstrations that state only the answer, and of worked ones with a slip.
    difficulty: int = 3
    shortcut_rate: float = 0.0
    slip_rate: float = 0.0


@dataclass(frozen=True)
class EngineSection:
    max_concurrent_decodes: int = 64
    max_prefill_length: int = 128
    max_cache_len: int = 256
    steps_per_sync: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    # Temperature by entropy (AceReason-Nemotron 1.1): the mean token entropy of softmax(z / T)
    # on each step's rollouts is logged as rollout/entropy; with temperature_control, T then
    # moves towards target_entropy: T <- clip(T exp(rate (target - H) / target), min, max).
    # Entropy is steep in T; a rate above ~0.3 can oscillate (docs/experiments.md).
    temperature_control: bool = False
    target_entropy: float = 0.3
    temperature_rate: float = 0.1
    min_temperature: float = 0.1
    max_temperature: float = 2.0


@dataclass(frozen=True)
class AlgoSection:
    advantage: str = "grpo"
    n: int = 8
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0
    loss_agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_type: str = "k3"
    kl_in_reward: bool = False
    kl_target: float = 0.0
    kl_horizon: int = 10000
    entropy_coef: float = 0.0
    # DAPO dynamic sampling: drop groups whose rewards are all equal, oversample to refill.
    dynamic_sampling: bool = False
    max_oversample_rounds: int = 3
    # What "all equal" compares: "score" (the rewards) or "correct" (0 < #correct < n, CAMPO's
    # rule, which a repetition penalty cannot defeat).
    dynamic_sampling_metric: str = "score"
    # Over-length responses (finish reason "length") are masked out of the loss.
    mask_truncated: bool = False
    # DAPO's soft overlong punishment: a reward ramp from 0 to -overlong_penalty over the last
    # overlong_buffer tokens before the maximum response length (0 = off; DAPO: 4096 of 20480).
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    recompute_old_logprobs: bool = False
    w_reinforce_lambda: float = 0.1
    gamma: float = 1.0
    # Keyword arguments of your own estimator (algo.advantage=module:function); built-ins read
    # their settings from named keys instead.
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-5
    # Linear warm-up over this many optimizer updates (a step makes trainer.mini_batches x
    # trainer.epochs of them; verl counts rollout steps instead).
    warmup_updates: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainerSection:
    steps: int = 100
    # Seed of the RL phase alone (prompt order, sampling, mini-batch order); -1 = run.seed.
    # Varying it keeps the task, tokenizer and warm start fixed (and cached) across seeds.
    seed: int = -1
    prompts_per_step: int = 16
    mini_batches: int = 1
    epochs: int = 1
    micro_batch_size: int = 0
    eval_every: int = 0


@dataclass(frozen=True)
class SFTSection:
    # Warm start before RL (0 = none), or the whole job for kind=sft.
    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20


@dataclass(frozen=True)
class RewardSpec:
    name: str = "math"
    weight: float = 1.0


@dataclass(frozen=True)
class EmpoSection:
    """The "empo" reward (label-free semantic entropy, ALGORITHMS.md section 5)."""

    # How a group's answers are clustered: "math" (the verifier's equivalence), "exact" (string
    # match, the reference code's behaviour) or "module:function", a judge(a, b) -> bool for
    # free-form answers, importable in a fresh Python process.
    equivalence: str = "math"
    # Seconds per equivalence check (math's symbolic path); a check that runs over counts as
    # "different".
    timeout: float = 2.0
    # Prompt filter: keep a group iff low <= its semantic entropy H_g <= high (nats; log G when all
    # G answers differ), drawing more prompts as dynamic sampling does; [] = keep all.
    entropy_band: tuple[float, ...] = ()


@dataclass(frozen=True)
class RewardsSection:
    fns: tuple[RewardSpec, ...] = (RewardSpec(),)
    timeout: float = 10.0
    workers: int = 2
    boxed_required: bool = True
    empo: EmpoSection = EmpoSection()


@dataclass(frozen=True)
class PrimeSection:
    """PRIME (algo.advantage=prime): the implicit PRM, its online update and the prompt filter."""

    beta: float = 0.05
    # The PRM's own AdamW (constant schedule): PRIME's recipe is lr 1e-6, grad clip 10, no decay.
    prm_lr: float = 1.0e-6
    prm_grad_clip: float = 10.0
    prm_weight_decay: float = 0.0
    # "after": the rewards come from the PRM's forward pass of its update (one forward, PRIME's
    # recipe); "before": update first, then score again with the updated PRM.
    update: str = "after"
    # "sft": a frozen copy of the starting actor; "old_policy": the actor's rollout log-probs.
    reference: str = "sft"
    # "token": r_t = beta q_t on every token; "whole": their sum on the last token.
    granularity: str = "token"
    process_coef: float = 5.0
    outcome_coef: float = 5.0
    # Divide the process rewards by the batch's largest |return| (verl's PRIME default).
    batch_norm: bool = True
    # Online prompt filter: keep a group iff acc_low <= mean accuracy <= acc_high.
    filter: bool = True
    acc_low: float = 0.2
    acc_high: float = 0.8
    drop_truncated: bool = False
    # Rounds of trainer.prompts_per_step prompts drawn at most to fill a step (4 = 4x oversampling).
    oversample: int = 4


@dataclass(frozen=True)
class PureSection:
    """PURE (algo.advantage=pure): min-form credit assignment on the implicit PRM's step scores.

    prm "implicit": PRIME's implicit PRM, with the `prime` section's beta, prm_lr, reference and
    update; "classifier": a frozen classifier-head PRM read from prm_path (Qwen2.5-Math-PRM's
    layout), sharing the actor's tokenizer.
    """

    prm: str = "implicit"
    prm_path: str = ""
    # How the classifier PRM reads a rollout (rlx.train.prm_format): "pure" (PURE's PRM: the
    # actor's tokens, each step's last token replaced by "\n"), "qwen_prm" (Qwen2.5-Math-PRM's
    # card: a chat with steps joined by "<extra_0>", in the PRM's own tokenizer) or "actor" (the
    # actor's tokens unchanged). prm_separator overrides the format's separator token.
    prm_format: str = "pure"
    prm_separator: str = ""

    # A response splits into steps after each separator (and at its end).
    separators: tuple[str, ...] = ("\n\n",)
    max_steps: int = 64
    # Step score in [-1, 1] from the implicit PRM: "prefix" = 2 sigmoid(beta sum_{t <= end_k} q_t) - 1
    # (its probability that the solution so far is right), "step" = the same on step k's tokens alone.
    step_score: str = "prefix"
    # Softmin temperature; weighting "min" (r_k = w_k PR_k) or "sum" (r_k = PR_k, the ablation).
    temperature: float = 0.1
    weighting: str = "min"
    # RLOO baseline on each response's mean step reward ("step") or mean token reward ("token").
    baseline: str = "step"
    # Verifiable reward VR = correct - 1 in {-1, 0}, RLOO-centred, added at EOS times vr_coef.
    vr_coef: float = 1.0
    # PURE's code (its default; --nomask_separator_adv turns it off) gives the step-end tokens
    # advantage 0 and leaves them out of the whitening's mean (rlx.kernels.pure.pure_whiten).
    zero_step_ends: bool = True


@dataclass(frozen=True)
class CampoSection:
    """CAMPO (MiroMind-M1) additions to the RL loop (ALGORITHMS.md section 7)."""

    # Trailing-loop penalty before group normalisation: "none", "paper" (score - f, f the loop's
    # share of the response) or "code" (score - code_penalty for truncated responses ending in a loop).
    repetition_penalty: str = "none"
    code_penalty: float = 0.1
    loop_min_repeats: int = 2
    # Over-length (truncated) responses score 0.
    zero_overlength: bool = False
    # Multi-stage maximum response length: engine.max_new_tokens per stage (empty = one stage of
    # engine.max_new_tokens). Stages advance at the steps in `boundaries` or, with none, when the
    # mean response length has not grown by min_growth (relative) for `patience` steps.
    max_lengths: tuple[int, ...] = ()
    boundaries: tuple[int, ...] = ()
    patience: int = 20
    min_growth: float = 0.01


@dataclass(frozen=True)
class EvalSection:
    datasets: tuple[str, ...] = ()
    n: int = 1
    k: tuple[int, ...] = (1,)
    temperature: float = 0.0
    max_new_tokens: int = 128
    limit: int = 0
    # Also decode one greedy response per problem (pass@1 greedy) beside the n samples.
    greedy: bool = True
    # Sampling filters for the n samples (temperature above); greedy ignores them.
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    # Only a \boxed{} answer counts (and votes in maj@k); else the last number etc. as well.
    boxed_required: bool = False


@dataclass(frozen=True)
class RoleMeshSection:
    # mesh.roles=disaggregated: `devices` after the actor's (0 = the actor's mesh), data x fsdp x tensor.
    devices: int = 0
    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclass(frozen=True)
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # colocated: every role on this mesh; disaggregated: roles with devices > 0 take the next devices.
    roles: str = "colocated"
    engine: RoleMeshSection = RoleMeshSection()
    reference: RoleMeshSection = RoleMeshSection()
    prm: RoleMeshSection = RoleMeshSection()


@dataclass(frozen=True)
class CheckpointSection:
    every: int = 0
    keep: int = 3
    async_save: bool = True


@dataclass(frozen=True)
class PlanSection:
    # `python -m rlx.launch plan`: memory per device before renting the hardware.
    # device sets the HBM per device (v4, v5e, v5p, v6e, a100, h100, h200) unless hbm_gib > 0.
    device: str = "v5p"
    hbm_gib: float = 0.0
    # Devices per mesh; 0 = the product of the mesh axes (then none of them may be -1).
    devices: int = 0
    # True: every role (actor, reference, PRM, engine) on one mesh; False: each on its own.
    colocated: bool = True
    # Fraction of HBM kept free for XLA's temporaries and fragmentation.
    headroom: float = 0.1
    # Also compile each phase's real jitted program (rlx.plan_compile) and print XLA's memory.
    compile: bool = False
    # TPU slice to compile for, e.g. v5p:4x4x2 (needs `pip install -e '.[tpu]'`); '' = the
    # local devices. It also sets the device kind and count, overriding device and devices.
    topology: str = ""


@dataclass(frozen=True)
class Config:
    run: RunConfig = RunConfig()
    model: ModelSection = ModelSection()
    tokenizer: TokenizerSection = TokenizerSection()
    data: DataSection = DataSection()
    engine: EngineSection = EngineSection()
    algo: AlgoSection = AlgoSection()
    optim: OptimSection = OptimSection()
    trainer: TrainerSection = TrainerSection()
    sft: SFTSection = SFTSection()
    rewards: RewardsSection = RewardsSection()
    prime: PrimeSection = PrimeSection()
    pure: PureSection = PureSection()
    campo: CampoSection = CampoSection()
    eval: EvalSection = EvalSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    plan: PlanSection = PlanSection()

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        candidates = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml"))
        raise ConfigError(f"config file not found: {path}. Configs shipped with rlx: "
                          f"{', '.join(candidates)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Resolve a config: defaults <- YAML file <- `key=value` overrides (in order)."""
    tree = load_yaml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(Config, tree, key, value)
    try:
        cfg = build(Config, tree)
    except ConfigError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{e}") from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every value against the registries the run uses, and the cross-field checks a type alone
    cannot express (rlx.config_checks)."""
    from rlx.config_checks import check_sections

    check_sections(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
