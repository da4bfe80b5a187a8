"""The run config schema (pydantic). Names follow NVIDIA NeMo RL where it has them.

Every section forbids unknown keys. Cross-field rules live in validators whose messages name the
fields involved. The ratio clips may be given under `grpo.` (as DAPO's recipes do) or `loss_fn.`
(as NeMo RL does); `RunConfig` reconciles the two and rejects a config that sets them differently.
A config that is valid but known to train badly gets a `ConfigWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from dapo.auth import redact_url
from dapo.dtypes import ServedDType, TrainPrecision
from dapo.records import VerifierName


class ConfigWarning(UserWarning):
    """A valid config with a setting known to hurt training; the message names the keys and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class TokenizerConfig(Section):
    name: str | None = None
    """Tokenizer directory; defaults to `policy.model_name`."""
    chat_template: str | None = "default"
    """As NeMo RL: "default" (the tokenizer's own), null (passthrough: the messages' contents joined), a
    Jinja template, or a path ending in `.jinja`."""


class OptimizerConfig(Section):
    name: Literal["adamw"] = "adamw"
    """Optimizer (AdamW)."""
    lr: float = Field(1e-6, gt=0, le=1)
    """Peak learning rate."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 to `lr` over this many optimizer steps, then constant."""

    @model_validator(mode="after")
    def _check_betas(self) -> OptimizerConfig:
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {beta}")
        return self


SCHEDULER_KWARGS: dict[str, frozenset[str]] = {
    "LinearLR": frozenset({"start_factor", "end_factor", "total_iters"}),
    "ConstantLR": frozenset({"factor", "total_iters"}),
    "CosineAnnealingLR": frozenset({"T_max", "eta_min"}),
}


class SchedulerStep(Section):
    name: str
    """A `torch.optim.lr_scheduler` class: LinearLR, ConstantLR or CosineAnnealingLR (either spelling)."""
    kwargs: dict[str, float] = Field(default_factory=dict)
    """Its constructor arguments."""

    @model_validator(mode="after")
    def _check(self) -> SchedulerStep:
        short = self.name.removeprefix("torch.optim.lr_scheduler.")
        if short not in SCHEDULER_KWARGS:
            raise ValueError(
                f"policy.scheduler: name {self.name!r} is not supported; use one of "
                + ", ".join(f"torch.optim.lr_scheduler.{n}" for n in SCHEDULER_KWARGS)
            )
        unknown = sorted(set(self.kwargs) - SCHEDULER_KWARGS[short])
        if unknown:
            raise ValueError(
                f"policy.scheduler: {short} takes {', '.join(sorted(SCHEDULER_KWARGS[short]))}, "
                f"not {', '.join(unknown)}"
            )
        return self


class SchedulerMilestones(Section):
    milestones: list[int]
    """Scheduler steps (training steps) at which the next scheduler of the list takes over."""


class VllmConfig(Section):
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs of one rollout server (vLLM tensor parallelism)."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Fraction of each GPU's memory the rollout engine may take."""
    max_model_len: int | None = Field(None, ge=16)
    """Prompt plus answer tokens in the engine; default `policy.max_total_sequence_length`."""
    precision: ServedDType | None = None
    """Engine dtype; default float32 on CPU, the model's own on GPU."""
    enforce_eager: bool | None = None
    """Run without CUDA graphs; default: the engine's choice (always eager on CPU)."""


class DTensorConfig(Section):
    enabled: bool = True
    """The FSDP2 (DTensor) trainer; it is the only one, so this must be true."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, more compute)."""

    @model_validator(mode="after")
    def _check_enabled(self) -> DTensorConfig:
        if not self.enabled:
            raise ValueError(
                "policy.dtensor_cfg.enabled is false, which selects NeMo RL's Megatron trainer: only the FSDP2 "
                "(DTensor) trainer exists here; set it true"
            )
        return self


class GenerationConfig(Section):
    temperature: float = Field(1.0, gt=0, le=10)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(-1, ge=-1)
    """Top-k sampling; -1 (or 0) disables it."""
    max_new_tokens: int = Field(512, ge=1)
    """Longest answer sampled; answers cut here are truncated."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings (the tokenizer's EOS always stops)."""
    vllm_cfg: VllmConfig = Field(default_factory=VllmConfig)
    """The rollout engine (vLLM)."""


class PolicyConfig(Section):
    model_name: str = "Qwen/Qwen2.5-1.5B"
    """Hugging Face model directory (or a name in the local HF cache)."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer settings."""
    max_total_sequence_length: int = Field(2048, ge=16)
    """Prompt plus answer tokens, at most."""
    train_global_batch_size: int = Field(512, ge=1)
    """Sequences per optimizer step, over all data-parallel ranks."""
    train_micro_batch_size: int = Field(4, ge=1)
    """Sequences per forward/backward pass on one rank."""
    max_tokens_per_microbatch: int | None = Field(None, ge=1)
    """Token budget per micro-batch; when set, micro-batches are packed by tokens instead of count."""
    precision: TrainPrecision = "bfloat16"
    """Parameter dtype in forward/backward (gradients are reduced in float32)."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping by global norm; null disables it."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """Optimizer settings."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """Sampling settings of the rollout engine."""
    logprob_chunk_size: int = Field(1024, ge=1)
    """Tokens per chunk when computing log-probs, so [tokens, vocab] never exists whole."""
    scheduler: list[SchedulerStep | SchedulerMilestones] | None = None
    """NeMo RL's LR schedule: torch schedulers chained by one `{milestones: [...]}` entry, stepped once
    per training step; null: `optimizer.warmup_steps`."""
    dtensor_cfg: DTensorConfig = Field(default_factory=DTensorConfig)
    """The FSDP2 trainer."""
    hf_config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Values replacing those of the model's config.json, in the trainer and the rollout engine."""

    @model_validator(mode="after")
    def _check_batches(self) -> PolicyConfig:
        if self.train_global_batch_size % self.train_micro_batch_size:
            raise ValueError(
                f"policy.train_global_batch_size ({self.train_global_batch_size}) must be divisible by "
                f"policy.train_micro_batch_size ({self.train_micro_batch_size})"
            )
        if self.generation.max_new_tokens > self.max_total_sequence_length:
            raise ValueError(
                f"policy.generation.max_new_tokens ({self.generation.max_new_tokens}) must be at most "
                f"policy.max_total_sequence_length ({self.max_total_sequence_length})"
            )
        max_model_len = self.generation.vllm_cfg.max_model_len
        if max_model_len is not None and max_model_len > self.max_total_sequence_length:
            raise ValueError(
                f"policy.generation.vllm_cfg.max_model_len ({max_model_len}) must be at most "
                f"policy.max_total_sequence_length ({self.max_total_sequence_length}): the trainer takes "
                "no longer sequences"
            )
        self._check_scheduler()
        return self

    def _check_scheduler(self) -> None:
        if self.scheduler is None:
            return
        steps = [s for s in self.scheduler if isinstance(s, SchedulerStep)]
        milestones = [m.milestones for m in self.scheduler if isinstance(m, SchedulerMilestones)]
        if not steps or len(milestones) > 1:
            raise ValueError("policy.scheduler needs one or more schedulers and at most one milestones entry")
        expected = len(steps) - 1
        points = milestones[0] if milestones else []
        if len(points) != expected or points != sorted(points):
            raise ValueError(
                f"policy.scheduler: {len(steps)} schedulers need {expected} increasing milestones, got {points}"
            )
        if self.optimizer.warmup_steps:
            raise ValueError(
                "policy.scheduler and policy.optimizer.warmup_steps are both set: use one of them"
            )


class RewardShapingConfig(Section):
    enabled: bool = False
    """Apply DAPO's soft overlong penalty (eq. 13)."""
    overlong_buffer_length: int = Field(0, ge=0)
    """L_cache: the penalty ramps over the last this-many tokens before `max_response_length`."""
    overlong_buffer_penalty: float = Field(1.0, ge=0)
    """Penalty at `max_response_length` (the ramp goes from 0 down to minus this)."""
    max_response_length: int | None = Field(None, ge=1)
    """L_max; defaults to `policy.generation.max_new_tokens`."""


class GRPOConfig(Section):
    num_prompts_per_step: int = Field(32, ge=1)
    """Prompts (groups) in each training batch after dynamic sampling."""
    num_generations_per_prompt: int = Field(16, ge=1)
    """Group size G."""
    max_num_steps: int = Field(100, ge=1)
    """Training steps (generation batches) in the run."""
    seed: int = Field(42, ge=0)
    """Seed for data order, sampling and initialisation."""
    normalize_rewards: bool = True
    """Divide advantages by the group's reward std (GRPO/DAPO); false gives Dr. GRPO's mean-only baseline."""
    use_leave_one_out_baseline: bool = False
    """Baseline each sample with the mean of the other samples in its group."""
    ratio_clip_min: float | None = Field(None, ge=0, lt=1)
    """Alias of `loss_fn.ratio_clip_min` (eps_low)."""
    ratio_clip_max: float | None = Field(None, ge=0, lt=1)
    """Alias of `loss_fn.ratio_clip_max` (eps_high)."""
    ratio_clip_c: float | None = Field(None, gt=1)
    """Alias of `loss_fn.ratio_clip_c` (dual clip)."""
    use_dynamic_sampling: bool = True
    """Drop groups whose answers are all right or all wrong, and keep sampling until the batch is full."""
    batch_multiplier: float = Field(1.0, ge=1)
    """Over-sampling factor: prompts generated per round = ceil(num_prompts_per_step * this)."""
    dynamic_sampling_max_gen_batches: int = Field(10, ge=1)
    """Generation rounds allowed to fill one batch before the step fails."""
    overlong_filtering: bool = False
    """Mask truncated answers out of the loss."""
    reward_shaping: RewardShapingConfig = Field(default_factory=RewardShapingConfig)
    """Overlong reward shaping."""
    max_staleness: int = Field(0, ge=0)
    """Train on samples at most this many policy versions old; 0 is fully synchronous."""
    val_period: int = Field(0, ge=0)
    """Validate every this many steps (0: only before and after training)."""
    val_at_start: bool = True
    """Validate before the first step."""
    max_num_epochs: int | None = Field(None, ge=1)
    """End the run early once this many passes over the training prompts are done; null: no limit."""


class LossConfig(Section):
    ratio_clip_min: float = Field(0.2, ge=0, lt=1)
    """eps_low: the ratio is clipped below at 1 - this."""
    ratio_clip_max: float = Field(0.28, ge=0, lt=1)
    """eps_high: the ratio is clipped above at 1 + this (DAPO's clip-higher)."""
    ratio_clip_c: float | None = Field(None, gt=1)
    """Dual-clip constant c (> 1) for negative advantages; null disables it."""
    token_level_loss: bool = True
    """Average over all tokens of the global batch (DAPO); false averages per sequence first (GRPO)."""
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] | None = None
    """Loss aggregation; defaults from `token_level_loss`."""
    reference_policy_kl_penalty: float = Field(0.0, ge=0, le=0)
    """Weight of a KL to the reference policy; must be 0: the trainer keeps no reference policy."""
    use_importance_sampling_correction: bool | None = None
    """Weight tokens by min(exp(old_logp - rollout_logp), C) (truncated importance sampling); null:
    on exactly when `grpo.max_staleness` is above 0 (samples from an older policy need it)."""
    truncated_importance_sampling_ratio: float = Field(2.0, gt=0)
    """C, the cap of the importance weight."""
    log_ratio_clamp: float = Field(20.0, gt=0)
    """The log-ratio is clamped to +-this before exp."""

    @model_validator(mode="after")
    def _default_aggregation(self) -> LossConfig:
        expected = "token-mean" if self.token_level_loss else "seq-mean-token-mean"
        if self.aggregation is None:
            object.__setattr__(self, "aggregation", expected)
        elif self.token_level_loss and self.aggregation != "token-mean":
            raise ValueError(
                f"loss_fn.aggregation={self.aggregation!r} contradicts loss_fn.token_level_loss=true "
                "(set token_level_loss: false for sequence-level aggregation)"
            )
        return self


class CheckpointingConfig(Section):
    enabled: bool = True
    """Write checkpoints."""
    checkpoint_dir: str = "results/checkpoints"
    """Each trainer node's checkpoint directory (its own volume, or one shared by all); `{node_rank}` in
    it is replaced by the node's rank, to keep nodes on one filesystem apart."""
    save_period: int = Field(10, ge=1)
    """Checkpoint every this many steps (and at the end)."""
    keep_top_k: int | None = Field(3, ge=1)
    """Keep the best this-many checkpoints by `metric_name` (the newest without one), plus the newest;
    null keeps all."""
    metric_name: str | None = Field(None, pattern=r"^(val|train):[A-Za-z0-9_]+$")
    """NeMo RL's `val:<metric>` or `train:<metric>` (e.g. `val:accuracy`) that ranks checkpoints."""
    higher_is_better: bool = True
    """Whether a larger `metric_name` is better."""

    @model_validator(mode="after")
    def _check_placeholders(self) -> CheckpointingConfig:
        rest = self.checkpoint_dir.replace("{node_rank}", "")
        if "{" in rest or "}" in rest:
            raise ValueError(
                f"checkpointing.checkpoint_dir '{self.checkpoint_dir}': the only placeholder is {{node_rank}}"
            )
        return self


class WandbConfig(Section):
    project: str = "dapo"
    """W&B project."""
    name: str | None = None
    """W&B run name."""


class LoggerConfig(Section):
    log_dir: str = "results/logs"
    """Metrics JSONL, TensorBoard events and plots go here (one folder per run)."""
    wandb_enabled: bool = False
    """Log to Weights & Biases."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """W&B settings."""
    tensorboard_enabled: bool = True
    """Write TensorBoard event files."""


class ClusterConfig(Section):
    gpus_per_node: int = Field(0, ge=0)
    """GPUs on each node (0: CPU only)."""
    num_nodes: int = Field(1, ge=1)
    """Nodes of the run: 1 for `dapo run`; more with deploy/slurm/dapo.sub (or the Helm chart)."""
    rollout_nodes: int = Field(0, ge=0)
    """Of `num_nodes`, the last ones given wholly to rollout servers (the trainer gets the others);
    0: every node runs trainer ranks and rollout servers side by side."""
    num_rollout_servers: int = Field(1, ge=1)
    """Rollout servers of the run (on several nodes: spread over the rollout nodes in turn)."""
    rollout_gpus: int | None = Field(None, ge=0)
    """GPUs of a node given to rollout servers (the rest go to the trainer); default half."""
    trainer_processes_per_node: int | None = Field(None, ge=1)
    """Trainer ranks per node; default: its GPUs, or 1 on CPU."""
    cpu_affinity_enabled: bool = True
    """CPU runs of the local launcher: pin rollout server(s) and trainer to disjoint CPU sets (with
    threads to match) when there are at least two usable CPUs; false leaves scheduling to the OS."""
    rollout_cpus: int | None = Field(None, ge=1)
    """CPUs of the rollout servers' set (the reward service and controller share it; the rest go to the
    trainer); default half of the usable CPUs, rounded down."""


class DataConfig(Section):
    train_file: str = "data/train.jsonl"
    """Training prompts: JSONL or Parquet in verl/NeMo row format, or GSM8K's."""
    validation_file: str | None = None
    """Held-out prompts in the same formats."""
    dataset_name: str | None = None
    """A named dataset read from a local copy instead of `train_file` (dapo.data.DATASETS)."""
    validation_dataset_name: str | None = None
    """A named dataset read from a local copy instead of `validation_file`."""
    split_validation_size: float = Field(0.0, ge=0, lt=1)
    """Hold out this fraction of the training prompts (seeded by `grpo.seed`) as the validation set."""
    format: Literal["auto", "verl", "gsm8k", "math"] = "auto"
    """Row format; auto detects it from the first row."""
    prompt_template: str | None = None
    """Python format string with `{question}`; applied before the chat template."""
    use_chat_template: bool = True
    """Render prompts with the chat template (`policy.tokenizer.chat_template`); false sends the
    messages' contents as plain text."""
    max_val_samples: int | None = Field(200, ge=1)
    """Validate on at most this many held-out prompts."""
    shuffle: bool = True
    """Shuffle training prompts each epoch (seeded by `grpo.seed`)."""

    @model_validator(mode="after")
    def _check_sources(self) -> DataConfig:
        for name, file in (("dataset_name", "train_file"), ("validation_dataset_name", "validation_file")):
            if getattr(self, name) is not None and file in self.model_fields_set:
                raise ValueError(f"data.{name} and data.{file} are both set: set one of them")
        has_validation = self.validation_file is not None or self.validation_dataset_name is not None
        if self.split_validation_size > 0 and has_validation:
            raise ValueError(
                "data.split_validation_size holds out training prompts for validation, but a validation set "
                "is also given (data.validation_file / data.validation_dataset_name): set one of them"
            )
        return self


class MathVerifyConfig(Section):
    """math-verify's grading options (its `verify` arguments, same names and defaults), and ours."""

    float_rounding: int = Field(6, ge=0, le=50)
    """Decimal places numbers are rounded to before they are compared."""
    numeric_precision: int = Field(15, ge=1, le=100)
    """Significant digits of the numeric evaluation that decides whether two expressions are equal."""
    strict: bool = True
    """Variables must match by name (x+1 differs from y+1) and sets do not equal tuples."""
    allow_set_relation_comp: bool = False
    """A gold set may equal a relation (gold [-2, 7], answer -2 <= x <= 7); the reverse always does."""
    string_comparison: bool = False
    """A gold that does not parse as mathematics is compared as a string instead of scoring error
    `unparsable_gold`."""


class MathEnvConfig(Section):
    verifier: VerifierName = "math_verify"
    """Answer checker: math-verify, DAPO's `Answer:` rule, or DAPO's strict last-\\boxed{} rule."""
    timeout: int = Field(5, ge=1, le=300)
    """Seconds allowed to verify one item (whole seconds: math-verify needs an int)."""
    workers: int = Field(2, ge=1, le=256)
    """Worker processes of the reward service."""
    max_response_chars: int = Field(100_000, ge=1)
    """Longer answers score as wrong with error `too_large`."""
    binary_reward: bool = False
    """Score 1/0 instead of DAPO's +1/-1."""
    math_verify: MathVerifyConfig = Field(default_factory=MathVerifyConfig)
    """Grading options of the `math_verify` verifier (a request may override each)."""

    @model_validator(mode="after")
    def _grading_options_need_math_verify(self) -> MathEnvConfig:
        # Compared with the defaults, not with the keys set: a dumped and reloaded config sets them all.
        if self.verifier != "math_verify" and self.math_verify != MathVerifyConfig():
            raise ValueError(
                f"env.math.math_verify: grading options apply only to verifier math_verify, "
                f"got verifier {self.verifier!r}"
            )
        return self


class EnvConfig(Section):
    math: MathEnvConfig = Field(default_factory=MathEnvConfig)
    """Math-answer verification."""


class ServicesConfig(Section):
    redis_url: str | None = None
    """Redis URL; null lets the launcher start a private redis-server (or uses $REDIS_URL)."""
    rollout_addresses: list[str] = Field(default_factory=list)
    """host:port of rollout gRPC servers; empty lets the launcher start them."""
    reward_address: str | None = None
    """host:port of the reward gRPC server; null lets the launcher start it."""
    weights_address: str | None = None
    """host:port of the trainer's weight publisher; null lets the launcher start the trainer."""
    rpc_timeout_s: float = Field(600.0, gt=0)
    """Deadline of one Generate or Score call."""
    trainer_restart_timeout_s: float = Field(300.0, gt=0)
    """A trainer silent for longer than this fails the run."""
    rollout_timeout_s: float = Field(600.0, gt=0)
    """With no rollout server serving the needed policy version for this long, the run fails (also when
    the servers that were serving it restart: the run waits for one to come back)."""
    trainer_progress_timeout_s: float = Field(1800.0, gt=0)
    """While the run waits for a newer policy version, a trainer that heartbeats but applies no batch
    for this long (a stuck step or collective) fails the run."""
    redis_timeout_s: float = Field(60.0, gt=0)
    """Every service retries an unreachable Redis, with back-off, for this long before giving up."""
    weights_relay_fanout: int = Field(1, ge=1)
    """Rollout servers each server relays a new weight version to: 1 makes a chain (the version's time
    to the last server is its time to one plus a chunk's hop per server), more a tree (fewer hops, but each
    relay sends the version that many times)."""
    weights_relay_stall_s: float = Field(30.0, gt=0)
    """A weight stream that takes no message for this long counts as stalled: a relay drops that child
    (the servers behind it resume from the trainer) and a server whose upstream stalls resumes by itself."""
    rollout_server_ttl_s: float = Field(60.0, gt=0)
    """A rollout server that has not answered the controller's probes for this long leaves the set the
    trainer pushes weights to; it rejoins when it answers again (it fetches missed versions itself)."""
    redis_events_maxlen: int = Field(10_000, ge=1)
    """The run's events stream in Redis keeps the newest this many events."""
    redis_metrics_maxlen: int = Field(100_000, ge=1)
    """The run's metrics stream in Redis keeps the newest this many records (about three a step; `dapo
    run` also writes every record it follows to `logger.log_dir`). `checkpointing.metric_name` ranks
    checkpoints by the records kept: an older version without one ranks after those with one."""
    redis_keep_applied_batches: int = Field(0, ge=0)
    """TrainBatches leave the run's batch stream once a committed checkpoint covers them; keep the newest
    this many of those for inspection (0: none)."""

    @field_serializer("redis_url")
    def _without_password(self, url: str | None) -> str | None:
        # A dumped config is printed, stored in the run record and written next to the outputs: a
        # password in the URL is replaced by *** there (prefer $DAPO_REDIS_PASSWORD).
        return None if url is None else redact_url(url)


class RunConfig(Section):
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """The policy model and its training."""
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    """The RL loop."""
    loss_fn: LossConfig = Field(default_factory=LossConfig)
    """The DAPO loss."""
    checkpointing: CheckpointingConfig = Field(default_factory=CheckpointingConfig)
    """Checkpoints."""
    logger: LoggerConfig = Field(default_factory=LoggerConfig)
    """Metrics logging."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Hardware layout."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Datasets."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    """Reward environment."""
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    """Where each service is."""

    @model_validator(mode="before")
    @classmethod
    def _reconcile_ratio_clips(cls, data: Any) -> Any:
        """Accept the ratio clips under `grpo.` or `loss_fn.`; reject different values in the two."""
        if not isinstance(data, dict):
            return data
        grpo, loss = data.get("grpo"), data.get("loss_fn")
        if not isinstance(grpo, dict):
            return data
        loss = dict(loss) if isinstance(loss, dict) else {}
        for key in ("ratio_clip_min", "ratio_clip_max", "ratio_clip_c"):
            if grpo.get(key) is None:
                continue
            if key in loss and loss[key] != grpo[key]:
                raise ValueError(
                    f"grpo.{key} ({grpo[key]}) and loss_fn.{key} ({loss[key]}) differ: set one of them"
                )
            loss[key] = grpo[key]
        return {**data, "loss_fn": loss}

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        # Mirror the canonical clips into grpo so both spellings read the same value.
        for key in ("ratio_clip_min", "ratio_clip_max", "ratio_clip_c"):
            object.__setattr__(self.grpo, key, getattr(self.loss_fn, key))
        generation_batch = self.grpo.num_prompts_per_step * self.grpo.num_generations_per_prompt
        if generation_batch % self.policy.train_global_batch_size:
            raise ValueError(
                f"grpo.num_prompts_per_step * grpo.num_generations_per_prompt ({generation_batch}) must be "
                f"divisible by policy.train_global_batch_size ({self.policy.train_global_batch_size})"
            )
        if self.grpo.use_dynamic_sampling and self.grpo.num_generations_per_prompt < 2:
            raise ValueError("grpo.use_dynamic_sampling needs grpo.num_generations_per_prompt >= 2")
        shaping = self.grpo.reward_shaping
        max_response = shaping.max_response_length or self.policy.generation.max_new_tokens
        if shaping.enabled and shaping.overlong_buffer_length >= max_response:
            raise ValueError(
                f"grpo.reward_shaping.overlong_buffer_length ({shaping.overlong_buffer_length}) must be "
                f"less than grpo.reward_shaping.max_response_length ({max_response})"
            )
        if self.loss_fn.use_importance_sampling_correction is None:
            object.__setattr__(
                self.loss_fn, "use_importance_sampling_correction", self.grpo.max_staleness > 0
            )
        elif self.grpo.max_staleness > 0 and not self.loss_fn.use_importance_sampling_correction:
            warnings.warn(
                f"grpo.max_staleness is {self.grpo.max_staleness} but "
                "loss_fn.use_importance_sampling_correction is false: samples from an older policy are "
                "then trained on without a correction, which was unstable in bench/RESULTS.md "
                '("Ablations"); leave loss_fn.use_importance_sampling_correction unset (it follows '
                "grpo.max_staleness) or set it true",
                ConfigWarning,
                stacklevel=2,
            )
        gen = self.policy.generation
        if self.loss_fn.use_importance_sampling_correction and (gen.top_p < 1 or gen.top_k > 0):
            warnings.warn(
                f"loss_fn.use_importance_sampling_correction is true with policy.generation.top_p="
                f"{gen.top_p} / top_k={gen.top_k}: the rollout's log-probs come from the truncated "
                "(renormalised) distribution and the trainer's from the full one, so the importance "
                "weights exp(old_logp - rollout_logp) are biased low on every sampled token; set top_p: 1.0 "
                "and top_k: -1, or turn the correction off",
                ConfigWarning,
                stacklevel=2,
            )
        return self

    @property
    def generation_batch_size(self) -> int:
        """Answers per training step: prompts per step times the group size."""
        return self.grpo.num_prompts_per_step * self.grpo.num_generations_per_prompt

    @property
    def max_response_length(self) -> int:
        """L_max of the overlong shaping."""
        return self.grpo.reward_shaping.max_response_length or self.policy.generation.max_new_tokens
