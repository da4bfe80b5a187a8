"""FSDP2 wrapping: `fully_shard` each decoder layer, then the root; mixed precision from the config.

Parameters are kept in float32 (the optimizer's master copy) and cast to `policy.precision` for
forward and backward; gradients are reduced in float32. The gradient reduction SUMS over ranks
(divide factor 1): every rank's loss is already its share of the global-batch loss (the global token
count is the denominator), so the summed gradient is exactly the whole batch's.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from dapo_trainer.distributed import DistContext
from dapo_trainer.model import LogprobModel

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def shard_model(model: LogprobModel, precision: str, ctx: DistContext) -> LogprobModel:
    """Shard `model` in place over all ranks; returns it (now an FSDPModule)."""
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,), mesh_dim_names=("dp",))
    policy = MixedPrecisionPolicy(param_dtype=PRECISIONS[precision], reduce_dtype=torch.float32)
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
