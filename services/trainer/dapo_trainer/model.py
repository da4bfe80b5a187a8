"""Load the Hugging Face causal LM and wrap it so one forward returns response-token log-probs, or
the DAPO loss.

`LogprobModel.forward` runs the decoder (`model.model`), gathers the hidden states that predict the
response tokens, and hands them with the lm_head weight to `dapo.algo.token_logprobs`, which never
materialises the [tokens, vocab] logits. Given `loss_inputs` it calls `dapo.algo.fused_policy_loss`
instead, which evaluates the loss chunk by chunk and forms the lm head's gradients in the same pass
(three [T x H x V] matmuls instead of four). The wrapper is FSDP2's root module, so the embedding,
final norm and lm_head are gathered by the root's hooks around exactly this forward: the loss must be
computed inside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from dapo.algo import LossOptions, fused_policy_loss, token_logprobs
from dapo.hub import resolve_model_dir

WRAPPER_PREFIX = "causal_lm."


@dataclass(frozen=True)
class ModelInfo:
    """What the trainer needs to know about the model directory."""

    model_dir: Path
    tokenizer_dir: Path
    vocab_size: int
    pad_token_id: int
    checkpoint_dtype: str  # the dtype the directory's weights are stored in (vLLM's dtype=auto)
    tie_word_embeddings: bool


def read_model_info(model_name: str, tokenizer_name: str | None) -> ModelInfo:
    model_dir = resolve_model_dir(model_name)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"policy.model_name: {model_dir} has no config.json")
    config = json.loads(config_path.read_text())
    text_config = config.get("text_config", config)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    pad = text_config.get("pad_token_id")
    if pad is None:
        pad = text_config.get("eos_token_id") or 0
    if isinstance(pad, list):
        pad = pad[0]
    return ModelInfo(
        model_dir=model_dir,
        tokenizer_dir=resolve_model_dir(tokenizer_name, "policy.tokenizer.name")
        if tokenizer_name
        else model_dir,
        vocab_size=int(text_config["vocab_size"]),
        pad_token_id=int(pad),
        checkpoint_dtype=dtype,
        tie_word_embeddings=bool(
            config.get("tie_word_embeddings", text_config.get("tie_word_embeddings", False))
        ),
    )


@dataclass(frozen=True)
class LossInputs:
    """What `LogprobModel.forward` needs to return the DAPO loss instead of log-probs (the arguments of
    `dapo.algo.fused_policy_loss` besides hidden states, lm head and targets). A dataclass, not plain
    tensor arguments, so FSDP2's mixed-precision input cast leaves these float32 tensors alone."""

    advantages_B: torch.Tensor
    mask_BR: torch.Tensor
    global_denominator: int | float
    options: LossOptions
    old_logp_BR: torch.Tensor | None = None  # None: the forward's own log-probs (ratio 1)
    rollout_logp_BR: torch.Tensor | None = None


class LogprobModel(nn.Module):
    """A causal LM whose forward gives (B, R) log-probs (and entropies) of the response tokens."""

    causal_lm: Any  # a transformers *ForCausalLM: `.model` (the decoder) and `.lm_head`

    def __init__(self, causal_lm: nn.Module, *, chunk_size: int, temperature: float) -> None:
        super().__init__()
        self.causal_lm = causal_lm
        self.chunk_size = chunk_size
        self.temperature = temperature

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.causal_lm.model.layers

    @overload
    def forward(
        self,
        input_ids_BT: torch.Tensor,
        attention_mask_BT: torch.Tensor,
        response_start_B: torch.Tensor,
        targets_BR: torch.Tensor,
        with_entropy: bool = True,
        loss_inputs: None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    @overload
    def forward(
        self,
        input_ids_BT: torch.Tensor,
        attention_mask_BT: torch.Tensor,
        response_start_B: torch.Tensor,
        targets_BR: torch.Tensor,
        with_entropy: bool = True,
        *,
        loss_inputs: LossInputs,
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]: ...

    def forward(
        self,
        input_ids_BT: torch.Tensor,
        attention_mask_BT: torch.Tensor,
        response_start_B: torch.Tensor,
        targets_BR: torch.Tensor,
        with_entropy: bool = True,
        loss_inputs: LossInputs | None = None,
    ) -> (
        tuple[torch.Tensor, torch.Tensor | None]
        | tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]
    ):
        """(logp_BR, entropy_BR) without `loss_inputs`; with them, `fused_policy_loss`'s
        (loss, raw metrics, logp_BR, entropy_BR), logp and entropy detached."""
        hidden_BTH = self.causal_lm.model(
            input_ids=input_ids_BT, attention_mask=attention_mask_BT, use_cache=False
        ).last_hidden_state
        # The hidden state at position p predicts token p + 1: response token j of sequence b sits at
        # response_start_B[b] + j and is predicted from position response_start_B[b] + j - 1.
        num_response = targets_BR.shape[1]
        positions_BR = response_start_B[:, None] - 1 + torch.arange(num_response, device=targets_BR.device)
        positions_BR = positions_BR.clamp(max=hidden_BTH.shape[1] - 1)
        index_BRH = positions_BR[:, :, None].expand(-1, -1, hidden_BTH.shape[2])
        weight_VH = self.causal_lm.lm_head.weight
        hidden_BRH = torch.gather(hidden_BTH, 1, index_BRH).to(weight_VH.dtype)
        if loss_inputs is not None:
            return fused_policy_loss(
                hidden_BRH,
                weight_VH,
                targets_BR,
                loss_inputs.old_logp_BR,
                loss_inputs.advantages_B,
                loss_inputs.mask_BR,
                global_denominator=loss_inputs.global_denominator,
                chunk_size=self.chunk_size,
                temperature=self.temperature,
                with_entropy=with_entropy,
                rollout_logp_BR=loss_inputs.rollout_logp_BR,
                options=loss_inputs.options,
            )
        logp_BR, entropy_BR = token_logprobs(
            hidden_BRH,
            weight_VH,
            targets_BR,
            chunk_size=self.chunk_size,
            temperature=self.temperature,
            with_entropy=with_entropy,
        )
        # token_logprobs returns reshaped views; FSDP's pre-backward hook wants outputs that are not.
        return logp_BR.clone(), entropy_BR.clone() if entropy_BR is not None else None


def load_model(
    info: ModelInfo,
    *,
    chunk_size: int,
    temperature: float,
    config_overrides: Mapping[str, Any] | None = None,
    activation_checkpointing: bool = False,
    on_meta: bool = False,
) -> LogprobModel:
    """The model in float32 master weights on the CPU (FSDP2 moves the shards to the device), or with
    `on_meta` its structure only, on the meta device (no memory; the weights come later, see
    dapo_trainer.fsdp.load_full_state_dict).

    `config_overrides` replace values of its config.json (NeMo RL's `policy.hf_config_overrides`);
    `activation_checkpointing` recomputes each decoder layer in the backward pass.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(info.model_dir), **dict(config_overrides or {}))
    if on_meta:
        with torch.device("meta"):
            causal_lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        causal_lm = AutoModelForCausalLM.from_pretrained(
            str(info.model_dir), config=config, dtype=torch.float32
        )
    causal_lm.config.use_cache = False
    if activation_checkpointing:
        causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    causal_lm.train()
    return LogprobModel(causal_lm, chunk_size=chunk_size, temperature=temperature)
