"""Run under torchrun (`python -m torch.distributed.run --nproc_per_node=N load_check.py MODEL OUT`): every
rank sets up the model the trainer's way (meta device, rank 0 reads and broadcasts) and the old way
(every rank loads the whole model, then shards it), and writes to OUT/rank<r>.json whether its shards,
its buffers and the log-probs of one batch are bitwise equal between the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check(model_dir: str, out_dir: Path) -> dict[str, object]:
    import torch
    from dapo_trainer.batches import collate
    from dapo_trainer.distributed import setup_distributed, teardown_distributed
    from dapo_trainer.fsdp import shard_model
    from dapo_trainer.model import load_model, read_model_info
    from dapo_trainer.synthetic import make_batch
    from dapo_trainer.train import setup_model

    from dapo.config import parse_config

    ctx = setup_distributed()
    config = parse_config({"policy": {"model_name": model_dir, "precision": "float32"}})
    info = read_model_info(model_dir, None)
    try:
        loaded = setup_model(config, info, ctx)
        torch.manual_seed(config.grpo.seed)
        every_rank = shard_model(
            load_model(
                info,
                chunk_size=config.policy.logprob_chunk_size,
                temperature=config.policy.generation.temperature,
            ),
            "float32",
            ctx,
        )
        new = {k: v.to_local() for k, v in loaded.state_dict().items()}
        old = {k: v.to_local() for k, v in every_rank.state_dict().items()}
        batch = make_batch("load", 0, num_sequences=4, vocab_size=info.vocab_size)
        mb = collate(batch, range(4), info.pad_token_id)
        with torch.no_grad():
            logp_new, _ = loaded(
                mb.input_ids_BT, mb.attention_mask_BT, mb.response_start_B, mb.targets_BR, False
            )
            logp_old, _ = every_rank(
                mb.input_ids_BT, mb.attention_mask_BT, mb.response_start_B, mb.targets_BR, False
            )
        result = {
            "rank": ctx.rank,
            "keys_equal": sorted(new) == sorted(old),
            "num_local_elements": sum(v.numel() for v in new.values()),
            "num_elements": sum(v.numel() for v in every_rank.state_dict().values()),
            "shards_unequal": [k for k in old if not torch.equal(new[k], old[k])],
            "buffers_unequal": [
                n
                for (n, a), (_, b) in zip(loaded.named_buffers(), every_rank.named_buffers(), strict=True)
                if not torch.equal(a, b)
            ],
            "meta": [n for n, p in [*loaded.named_parameters(), *loaded.named_buffers()] if p.is_meta],
            "logprobs_equal": bool(torch.equal(logp_new, logp_old)),
            "logprob_mean": float(logp_new.mean()),
        }
    finally:
        teardown_distributed()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{result['rank']}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    check(sys.argv[1], Path(sys.argv[2]))
