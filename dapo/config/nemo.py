"""NVIDIA NeMo RL's config keys, mapped onto ours before the schema sees them.

NeMo RL's recipes (`examples/configs/grpo_math_*.yaml`, `recipes/llm/dapo-*.yaml`) carry many keys for
parts we do not have (Megatron, other generation backends, LoRA, MLflow, ...). `translate` sorts every
key of a config (flattened to dotted paths) into one of four kinds:

- mapped: renamed to our key with NeMo's meaning (`policy.optimizer.kwargs.lr` -> `policy.optimizer.lr`,
  `env.math.num_workers` -> `env.math.workers`, `grpo.async_grpo.max_trajectory_age_steps` ->
  `grpo.max_staleness`, `grpo.reward_scaling` -> `env.math.binary_reward`, ...);
- inert: accepted only at the value that matches what we do (`loss_fn.use_cispo: false`); any other
  value would change what is trained, so it is refused, naming the key;
- ignored: settings of backends and features that do not change what is trained (parallelism plans,
  other loggers, ports); they are listed in ONE `ConfigWarning` and dropped;
- ours: everything else goes to the schema unchanged (unknown keys are errors there).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dapo.records import VerifierName

# Subtrees (or leaves) dropped with a warning: they tune speed, memory or other backends only.
IGNORED: tuple[str, ...] = (
    "policy.megatron_cfg",
    "policy.draft",
    "policy.generation_batch_size",
    "policy.logprob_batch_size",
    "policy.offload_optimizer_for_logprob",
    "policy.make_sequence_length_divisible_by",
    "policy.dtensor_cfg._v2",
    "policy.dtensor_cfg.cpu_offload",
    "policy.dtensor_cfg.sequence_parallel",
    "policy.dtensor_cfg.tensor_parallel_size",
    "policy.dtensor_cfg.context_parallel_size",
    "policy.dtensor_cfg.custom_parallel_plan",
    "policy.dtensor_cfg.automodel_kwargs",
    "policy.dtensor_cfg.expert_parallel_size",
    "policy.dtensor_cfg.moe_parallelizer",
    "policy.dtensor_cfg.env_vars",
    "policy.dtensor_cfg.lora_cfg",  # enabled: true is refused below
    "policy.dynamic_batching",  # enabled: true is mapped below
    "policy.sequence_packing",
    "policy.tokenizer.use_fastokens",
    "policy.generation.backend",
    "policy.generation.port_range_low",
    "policy.generation.port_range_high",
    "policy.generation.refit_transport",
    "policy.generation.real_quant_export_cpu_offload",
    "policy.generation.refit_cfg",
    "policy.generation.mcore_generation_config",
    "policy.generation.sglang_cfg",
    "policy.generation.trtllm_cfg",
    "policy.generation.dynamo_cfg",
    "policy.generation.colocated",
    "policy.generation.vllm_kwargs",
    "policy.generation.val_temperature",
    "policy.generation.val_top_p",
    "policy.generation.val_top_k",
    "policy.generation.vllm_cfg.async_engine",
    "policy.generation.vllm_cfg.kv_cache_dtype",
    "policy.generation.vllm_cfg.pipeline_parallel_size",
    "policy.generation.vllm_cfg.expert_parallel_size",
    "policy.generation.vllm_cfg.use_tqdm",
    "policy.generation.vllm_cfg.use_deep_gemm",
    "policy.generation.vllm_cfg.num_last_layers_in_bf16",
    "policy.generation.vllm_cfg.num_first_layers_in_bf16",
    "policy.generation.vllm_cfg.enable_vllm_metrics_logger",
    "policy.generation.vllm_cfg.vllm_metrics_logger_interval",
    "policy.generation.vllm_cfg.http_refit_api_key_env_var",
    "policy.generation.vllm_cfg.reset_encoder_cache_after_weight_update",
    "policy.generation.vllm_cfg.http_refit_server_port",
    "policy.generation.vllm_cfg.zmq_refit_server_port",
    "grpo.val_batch_size",
    "grpo.val_start_at",
    "grpo.val_at_end",
    "grpo.async_grpo.max_generation_failures",
    "grpo.async_grpo.recompute_kv_cache_after_weight_updates",
    "checkpointing.checkpoint_must_save_by",
    "checkpointing.save_consolidated",
    "checkpointing.save_optimizer",
    "data.max_input_seq_length",
    "data.num_workers",
    "logger.num_val_samples_to_print",
    "logger.mlflow_enabled",
    "logger.swanlab_enabled",
    "logger.monitor_gpus",
    "logger.wandb.log_nemo_gym_full_result_tables",
    "logger.swanlab",
    "logger.tensorboard",
    "logger.mlflow",
    "logger.gpu_monitoring",
    "cluster.master_port_range_low",
    "cluster.master_port_range_high",
    "cluster.segment_size",
    "data_plane.impl",
    "data_plane.backend",
    "data_plane.storage_capacity",
    "data_plane.num_storage_units",
    "data_plane.claim_meta_poll_interval_s",
    "data_plane.global_segment_size",
    "data_plane.local_buffer_size",
)

_OFF = (None, False, 0, 0.0)
# Keys accepted only at values that match what we do; any other value is refused with the reason.
INERT: dict[str, tuple[tuple[Any, ...], str]] = {
    "grpo.max_rollout_turns": ((1,), "math prompts are answered in one turn"),
    "grpo.val_num_generations_per_prompt": ((1,), "validation samples one greedy answer per prompt"),
    "grpo.stop_at_validation_metric": ((None,), "runs end at grpo.max_num_steps"),
    "grpo.stop_at_validation_threshold": ((None,), "runs end at grpo.max_num_steps"),
    "grpo.advantage_clip_low": ((None,), "advantages are not clipped"),
    "grpo.advantage_clip_high": ((None,), "advantages are not clipped"),
    "grpo.seq_logprob_error_threshold": ((None,), "sequences are not filtered by log-prob error"),
    "grpo.invalid_tool_call_advantage": ((None,), "there are no tool calls"),
    "grpo.malformed_thinking_advantage": ((None,), "thinking tags are not checked"),
    "grpo.adv_estimator.name": (("grpo",), "the advantage is GRPO's group-relative one"),
    "grpo.adv_estimator.minus_baseline": ((True,), "the group mean is always subtracted"),
    "grpo.reward_shaping.stop_properly_penalty_coef": ((None,), "only the overlong penalty is applied"),
    "grpo.async_grpo.in_flight_weight_updates": ((False,), "weights are swapped between generations"),
    "loss_fn.reference_policy_kl_type": ((None, "k1", "k2", "k3"), "there is no KL term"),
    "loss_fn.use_on_policy_kl_approximation": (_OFF, "there is no KL term"),
    "loss_fn.use_kl_in_reward": (_OFF, "there is no KL term"),
    "loss_fn.truncated_importance_sampling_type": (
        (None, "tis"),
        "only truncated importance sampling ('tis') is implemented",
    ),
    "loss_fn.truncated_importance_sampling_ratio_min": ((None, 0, 0.0), "the weight is only capped above"),
    "loss_fn.sequence_level_importance_ratios": (_OFF, "importance ratios are per token"),
    "loss_fn.force_on_policy_ratio": (_OFF, "the ratio is always computed"),
    "loss_fn.use_cispo": (_OFF, "the loss is DAPO's clipped surrogate"),
    "loss_fn.disable_ppo_ratio": (_OFF, "the loss is DAPO's clipped surrogate"),
    "loss_fn.positive_example_nll_weight": (_OFF, "there is no NLL term"),
    "policy.megatron_cfg.enabled": (_OFF, "the trainer is FSDP2 (policy.dtensor_cfg) only"),
    "policy.dtensor_cfg.lora_cfg.enabled": (_OFF, "all parameters are trained (no LoRA)"),
    "policy.draft.enabled": (_OFF, "there is no draft model"),
    "policy.tokenizer.chat_template_kwargs": ((None,), "the chat template takes no arguments"),
    "policy.generation.stop_token_ids": ((None,), "use policy.generation.stop (stop strings)"),
    "data.use_multiple_dataloader": (_OFF, "one training dataset"),
    "data.default.system_prompt_file": ((None,), "prompts are the dataset's messages"),
    "data.train.system_prompt_file": ((None,), "prompts are the dataset's messages"),
    "data.default.processor": (("math_hf_data_processor",), "rows are read as math prompts"),
    "data.train.processor": (("math_hf_data_processor",), "rows are read as math prompts"),
    "data.default.env_name": (("math",), "the reward is the math environment"),
    "data.train.env_name": (("math",), "the reward is the math environment"),
    "data.validation.env_name": (("math",), "the reward is the math environment"),
    "data_plane.enabled": (_OFF, "batches go through Redis"),
    "policy.generation.vllm_cfg.logprobs_mode": (
        ("processed_logprobs",),
        "rollout log-probs are those of the distribution sampled from",
    ),
    "reward_penalties.penalize_duplicated_reasoning": (_OFF, "rewards are the verifier's"),
    "reward_penalties.penalize_empty_final_answer": (_OFF, "rewards are the verifier's"),
    "reward_penalties.penalize_unwanted_tokens": (_OFF, "rewards are the verifier's"),
    "reward_penalties.penalize_malformed_think_tag": (_OFF, "rewards are the verifier's"),
    "reward_penalties.token_ids": ((None,), "rewards are the verifier's"),
    "on_policy_distillation": ((None,), "there is no teacher model"),
    "checkpointing.model_save_format": ((None, "safetensors"), "exports are safetensors"),
}
# Keys that only matter when the KL penalty is on (refused below): accepted silently.
_KL_ONLY = ("loss_fn.kl_input_clamp_value", "loss_fn.kl_output_clamp_value")

RENAMES: dict[str, str] = {
    "policy.optimizer.kwargs.lr": "policy.optimizer.lr",
    "policy.optimizer.kwargs.weight_decay": "policy.optimizer.weight_decay",
    "policy.optimizer.kwargs.betas": "policy.optimizer.betas",
    "policy.optimizer.kwargs.eps": "policy.optimizer.eps",
    "policy.generation.stop_strings": "policy.generation.stop",
    "env.math.num_workers": "env.math.workers",
    "grpo.max_val_samples": "data.max_val_samples",
    "data.train.dataset_name": "data.dataset_name",
    "data.train.data_path": "data.train_file",
    "data.validation.dataset_name": "data.validation_dataset_name",
    "data.validation.data_path": "data.validation_file",
    "data.train.split_validation_size": "data.split_validation_size",
}
# Transformer Engine's FusedAdam defaults to decoupled weight decay (adam_w_mode): AdamW's update.
_OPTIMIZER_NAMES = (
    "torch.optim.AdamW",
    "AdamW",
    "adamw",
    "transformer_engine.pytorch.optimizers.fused_adam.FusedAdam",
)
# Optimizer arguments that change only speed or the precision of the optimizer's state.
_OPTIMIZER_SPEED_KWARGS = (
    "foreach",
    "fused",
    "capturable",
    "master_weights",
    "store_param_remainders",
    "exp_avg_dtype",
    "exp_avg_sq_dtype",
)
# NeMo RL datasets that never split off a validation set (their split_validation_size is unused).
_UNSPLIT_DATASETS = ("DAPOMath17K", "DAPOMathAIME2024")
# NeMo RL's env.math.math_verify_impl -> our env.math.verifier (dapo.records.VERIFIERS).
_VERIFIERS: dict[str, VerifierName] = {"hf_math_verify": "math_verify", "dapo_math_verify": "dapo"}


class NemoKeyError(ValueError):
    """A NeMo RL key whose value we cannot honour; the message names it and what is supported."""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> leaf value; lists and empty mappings are leaves."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _is_ignored(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in IGNORED)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    return a == b


class _Mapped(dict[str, Any]):
    """The mapped keys, and for each the key it came from (to name both spellings in a conflict)."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, str] = {}


def _put(out: dict[str, Any], path: str, value: Any, source: str) -> None:
    sources = out.sources if isinstance(out, _Mapped) else {}
    if path in out and not _same(out[path], value):
        raise NemoKeyError(
            f"{source} ({value!r}) and {sources.get(path, path)} ({out[path]!r}) differ: set one of them"
        )
    out[path] = value
    sources.setdefault(path, source)


def _pop_mapped(flat: dict[str, Any], out: dict[str, Any], ignored: list[str]) -> None:
    """The keys whose mapping needs more than a rename."""
    _map_optimizer(flat, out, ignored)
    _drop_null_defaults(flat)
    _map_verifier(flat, out)
    _map_adv_estimator(flat)
    _map_reward_scaling(flat, out)
    _map_colocated(flat, out)
    _map_async(flat, out)
    _map_loss(flat, out)
    _map_batching(flat, out)
    _map_data(flat, out)


def _map_optimizer(flat: dict[str, Any], out: dict[str, Any], ignored: list[str]) -> None:
    """policy.optimizer: only torch.optim.AdamW; its speed-only kwargs are ignored, others refused."""
    name = flat.pop("policy.optimizer.name", None)
    if name is not None:
        if name not in _OPTIMIZER_NAMES:
            raise NemoKeyError(f"policy.optimizer.name {name!r} is not supported: use torch.optim.AdamW")
        out["policy.optimizer.name"] = "adamw"
    extra_kwargs = sorted(k for k in flat if k.startswith("policy.optimizer.kwargs."))
    for key in extra_kwargs:
        if key in RENAMES:
            continue
        value = flat.pop(key)
        if key.rsplit(".", 1)[1] in _OPTIMIZER_SPEED_KWARGS:
            ignored.append(key)
        elif not (key.endswith(".adam_w_mode") and value is True):
            raise NemoKeyError(
                f"{key} ({value!r}) is not supported: policy.optimizer.kwargs takes lr, weight_decay, "
                "betas and eps"
            )


def _drop_null_defaults(flat: dict[str, Any]) -> None:
    """NeMo's nulls that mean "the default" (or "off"), spelled as our schema wants them."""
    if flat.get("policy.generation.top_k", 0) is None:
        flat["policy.generation.top_k"] = -1  # NeMo's null is "off"
    if "policy.logprob_chunk_size" in flat and flat["policy.logprob_chunk_size"] is None:
        del flat["policy.logprob_chunk_size"]
    for key in (
        "policy.generation.vllm_cfg.max_model_len",
        "policy.generation.vllm_cfg.enforce_eager",
        "policy.generation.stop_strings",
    ):
        if key in flat and flat[key] is None:
            del flat[key]


def _map_verifier(flat: dict[str, Any], out: dict[str, Any]) -> None:
    impl = flat.pop("env.math.math_verify_impl", None)
    if impl is not None:
        if impl not in _VERIFIERS:
            raise NemoKeyError(
                f"env.math.math_verify_impl {impl!r} is not supported: use {' or '.join(_VERIFIERS)}"
            )
        _put(out, "env.math.verifier", _VERIFIERS[impl], "env.math.math_verify_impl")


def _map_adv_estimator(flat: dict[str, Any]) -> None:
    """Advantage estimator: only GRPO's, with the same switches as grpo.* (NeMo interpolates them)."""
    for key in ("normalize_rewards", "use_leave_one_out_baseline"):
        nested = flat.pop(f"grpo.adv_estimator.{key}", None)
        if nested is not None and nested != flat.get(f"grpo.{key}", nested):
            raise NemoKeyError(
                f"grpo.adv_estimator.{key} ({nested}) differs from grpo.{key} ({flat[f'grpo.{key}']}): "
                "set them alike"
            )
        if nested is not None:
            flat.setdefault(f"grpo.{key}", nested)


def _map_data(flat: dict[str, Any], out: dict[str, Any]) -> None:
    """data.*: prompt files, the validation set's own prompting, and the split's seed."""
    for key in ("data.default.prompt_file", "data.train.prompt_file"):
        if key in flat:
            prompt_file = flat.pop(key)
            if prompt_file is not None:
                _put(out, "data.prompt_template", _read_prompt_file(key, prompt_file), key)
    for key in (
        "data.validation.prompt_file",
        "data.validation.processor",
        "data.validation.system_prompt_file",
    ):
        flat.pop(key, None)  # the validation set is prompted like the training set
    if flat.get("data.train.dataset_name") in _UNSPLIT_DATASETS:
        flat.pop("data.train.split_validation_size", None)
    split_seed = flat.pop("data.train.seed", None)
    if split_seed is not None and split_seed != flat.get("grpo.seed", 42):
        raise NemoKeyError(
            f"data.train.seed ({split_seed}) differs from grpo.seed: the validation split is seeded by grpo.seed"
        )
    if flat.get("data.validation") is None:
        flat.pop("data.validation", None)
    if flat.get("data.dataset_name") is not None and "data.train.dataset_name" in flat:
        raise NemoKeyError("data.dataset_name and data.train.dataset_name are both set: set one of them")


def _map_reward_scaling(flat: dict[str, Any], out: dict[str, Any]) -> None:
    """NeMo's math environment scores 1/0; reward_scaling maps [source] linearly to [target].

    Ours scores +1/-1 (DAPO) or, with env.math.binary_reward, 1/0: the two mappings we can express.
    """
    keys = [k for k in flat if k.startswith("grpo.reward_scaling.")]
    if not keys:
        return
    scaling = {k.rsplit(".", 1)[1]: flat.pop(k) for k in keys}
    if not scaling.get("enabled", False):
        _put(out, "env.math.binary_reward", True, "grpo.reward_scaling.enabled")
        return
    ends = tuple(float(scaling.get(k, d)) for k, d in (("source_min", 0), ("source_max", 1)))
    target = tuple(float(scaling.get(k, d)) for k, d in (("target_min", 0), ("target_max", 1)))
    if ends != (0.0, 1.0) or target not in ((-1.0, 1.0), (0.0, 1.0)):
        raise NemoKeyError(
            f"grpo.reward_scaling maps [{ends[0]}, {ends[1]}] to [{target[0]}, {target[1]}]: only "
            "[0, 1] -> [-1, 1] (DAPO's +1/-1 reward) or [0, 1] -> [0, 1] (env.math.binary_reward) are supported"
        )
    _put(out, "env.math.binary_reward", target == (0.0, 1.0), "grpo.reward_scaling")


def _map_colocated(flat: dict[str, Any], out: dict[str, Any]) -> None:
    """NeMo's non-colocated generation: nodes of its own (several nodes) or GPUs of its own (one node).

    Colocated generation (NeMo time-shares the training GPUs) is ignored with the warning: our rollout
    servers always get GPUs of their own (cluster.rollout_gpus of each node, or cluster.rollout_nodes).
    """
    prefix = "policy.generation.colocated."
    if flat.get(prefix + "enabled") is not False:
        return
    del flat[prefix + "enabled"]
    nodes = flat.pop(prefix + "resources.num_nodes", None)
    gpus = flat.pop(prefix + "resources.gpus_per_node", None)
    if nodes:
        _put(out, "cluster.rollout_nodes", int(nodes), prefix + "resources.num_nodes")
    elif gpus is not None:
        _put(out, "cluster.rollout_gpus", int(gpus), prefix + "resources.gpus_per_node")


def _map_async(flat: dict[str, Any], out: dict[str, Any]) -> None:
    enabled = flat.pop("grpo.async_grpo.enabled", None)
    age = flat.pop("grpo.async_grpo.max_trajectory_age_steps", None)
    if enabled:
        _put(out, "grpo.max_staleness", int(age if age is not None else 1), "grpo.async_grpo")


def _map_loss(flat: dict[str, Any], out: dict[str, Any]) -> None:
    kl = flat.get("loss_fn.reference_policy_kl_penalty")
    if kl is not None and float(kl) > 0:
        raise NemoKeyError(
            f"loss_fn.reference_policy_kl_penalty is {kl}: a KL penalty needs a reference policy, which the "
            "trainer does not keep; set loss_fn.reference_policy_kl_penalty=0 (DAPO uses no KL term)"
        )
    for key in _KL_ONLY:
        flat.pop(key, None)
    tis_type = flat.get("loss_fn.truncated_importance_sampling_type")
    if "loss_fn.truncated_importance_sampling_ratio" in flat:
        ratio = flat["loss_fn.truncated_importance_sampling_ratio"]
        if ratio is None:
            del flat["loss_fn.truncated_importance_sampling_ratio"]
            if flat.get("loss_fn.use_importance_sampling_correction") and tis_type is None:
                raise NemoKeyError(
                    "loss_fn.use_importance_sampling_correction is true with "
                    "loss_fn.truncated_importance_sampling_ratio null (untruncated importance weights): "
                    "only truncated weights are supported; set loss_fn.truncated_importance_sampling_ratio"
                )
    if tis_type == "tis" and not flat.get("loss_fn.use_importance_sampling_correction", False):
        raise NemoKeyError(
            "loss_fn.truncated_importance_sampling_type is 'tis' but "
            "loss_fn.use_importance_sampling_correction is false: set it true"
        )
    flat.pop("loss_fn.truncated_importance_sampling_type", None)


def _map_batching(flat: dict[str, Any], out: dict[str, Any]) -> None:
    """Sequence packing and dynamic batching bound a micro-batch by tokens: our max_tokens_per_microbatch."""
    for section in ("policy.sequence_packing", "policy.dynamic_batching"):
        if flat.get(f"{section}.enabled"):
            tokens = flat.get(f"{section}.train_mb_tokens")
            if tokens is not None:
                _put(out, "policy.max_tokens_per_microbatch", int(tokens), f"{section}.train_mb_tokens")


def _read_prompt_file(key: str, value: Any) -> str:
    """NeMo's prompt files hold a format string with one `{}`; ours take `{question}`."""
    path = Path(str(value))
    if not path.is_file():
        raise NemoKeyError(f"{key}: prompt file {str(path)!r} does not exist (paths are relative to the cwd)")
    parts = list(string.Formatter().parse(path.read_text()))
    fields = [name for _, name, _, _ in parts if name is not None]
    if fields != [""]:
        raise NemoKeyError(f"{key}: prompt file {str(path)!r} must hold exactly one '{{}}' for the question")
    # Rebuild it as a format string with a named field, keeping `{{`/`}}` escapes.
    escape = {ord("{"): "{{", ord("}"): "}}"}
    return "".join(
        literal.translate(escape) + ("{question}" if name is not None else "")
        for literal, name, _, _ in parts
    )


def translate(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Our config dict for `data` (NeMo RL keys mapped), and the NeMo keys that were ignored.

    Raises NemoKeyError naming a key whose value would change training in a way we cannot honour.
    """
    flat = flatten(data)
    out: dict[str, Any] = _Mapped()
    for key, (allowed, reason) in INERT.items():
        if key in flat:
            value = flat.pop(key)
            if not any(_same(value, a) for a in allowed):
                shown = ", ".join(repr(a) for a in allowed)
                raise NemoKeyError(f"{key} is {value!r}: not supported ({reason}); supported: {shown}")
        elif any(k.startswith(key + ".") for k in flat):  # a subtree: on_policy_distillation: {...}
            raise NemoKeyError(f"{key} is set: not supported ({reason})")
    ignored: list[str] = []
    _pop_mapped(flat, out, ignored)
    for key in list(flat):
        if _is_ignored(key):
            prefix = next(p for p in IGNORED if key == p or key.startswith(p + "."))
            if prefix not in ignored:
                ignored.append(prefix)
            del flat[key]
    for key, value in flat.items():
        _put(out, RENAMES.get(key, key), value, key)
    return unflatten(out), ignored


RESOLVERS: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "max": lambda a, b: max(a, b),
}
"""OmegaConf resolvers NeMo RL's configs use (`${mul:a,b}` and friends)."""


_FLOAT_NO_DOT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def is_float_literal(text: str) -> bool:
    """YAML 1.1 reads `1e-8` (no dot) as a string; NeMo's loader (OmegaConf) reads a float."""
    return bool(_FLOAT_NO_DOT.match(text)) and math.isfinite(float(text))
