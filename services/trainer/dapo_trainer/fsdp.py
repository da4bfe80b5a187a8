"""FSDP2 wrapping: `fully_shard` each decoder layer, then the root; mixed precision from the config.

Parameters are kept in float32 (the optimizer's master copy) and cast to `policy.precision` for
forward and backward; gradients are reduced in float32. The gradient reduction SUMS over ranks
(divide factor 1): every rank's loss is already its share of the global-batch loss (the global token
count is the denominator), so the summed gradient is exactly the whole batch's.

`load_full_state_dict` fills a model built on the meta device and sharded here: rank 0 alone holds the
pretrained weights in full and broadcasts them tensor by tensor; every rank keeps only its shard, so no
other rank ever holds a whole copy.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from dapo.dtypes import TRAIN_PRECISIONS, torch_dtype
from dapo_trainer.distributed import DistContext, broadcast
from dapo_trainer.model import LogprobModel


def shard_model(model: LogprobModel, precision: str, ctx: DistContext) -> LogprobModel:
    """Shard `model` in place over all ranks; returns it (now an FSDPModule)."""
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,), mesh_dim_names=("dp",))
    assert precision in TRAIN_PRECISIONS, precision  # the config schema allows no other
    policy = MixedPrecisionPolicy(param_dtype=torch_dtype(precision), reduce_dtype=torch.float32)
    layers = list(model.decoder_layers)
    for index, layer in enumerate(layers):
        # The last layer's parameters are needed again at once by backward: keep them gathered.
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=index < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            # A plain SUM (gloo has no PREMUL_SUM; NCCL then runs zero-copy).
            module.set_force_sum_reduction_for_comms(True)
    return model


def load_full_state_dict(model: LogprobModel, source: LogprobModel | None, ctx: DistContext) -> None:
    """Collective: give the sharded meta-device `model` the weights of `source` (rank 0: the pretrained
    model in full on the CPU; None on the other ranks)."""
    assert (source is not None) == ctx.is_main, "rank 0, and only rank 0, passes the source model"
    model.to_empty(device=ctx.device)
    set_model_state_dict(
        model,
        source.state_dict() if source is not None else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    # Buffers outside the state dict (rotary frequencies) were left uninitialised by `to_empty`: rank 0's.
    in_state_dict = set(model.state_dict())
    buffers = broadcast(
        {n: b for n, b in source.named_buffers() if n not in in_state_dict} if source is not None else None,
        ctx,
    )
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
