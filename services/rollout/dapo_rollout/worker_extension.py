"""Runs inside vLLM's worker process (passed as `worker_extension_cls`): reload weights from a directory.

vLLM's own `reload_weights(weights_path=...)` goes through the model loader, which a server started with
`load_format="dummy"` (architecture only, `--wait-for-weights`) does not have; feeding the tensors of a
staged safetensors directory as an iterator works with every load format, on CPU and GPU alike. The
tensors are views of the memory-mapped staged file, so the bytes are copied once, by vLLM's weight
loaders into the model.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def mapped_tensors(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (name, tensor) for a safetensors file, each tensor a view of one shared memory mapping."""
    import torch

    from dapo.dtypes import from_safetensors, torch_dtype
    from dapo.safetensors_header import read_header

    header, data_start = read_header(path)
    with open(path, "r+b") as f:
        # Shared, not private: populating a private writable mapping would copy every page. The staged file
        # is scratch once loaded, so a loader writing into its input could do no harm.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # map every page in one call
        mapping = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = (data_start + int(o) for o in entry["data_offsets"])
        dtype = torch_dtype(from_safetensors(entry["dtype"]))
        shape = [int(d) for d in entry["shape"]]
        if end == begin:  # torch.frombuffer refuses a count of 0
            yield name, torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(mapping, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        yield name, flat.view(shape)


class WeightReloadExtension:
    """Mixed into vLLM's worker class; `self` is the worker."""

    model_runner: Any

    def dapo_reload_weights(self, weights_path: str) -> int:
        """Load every tensor of the safetensors files in `weights_path` in place; return their count."""
        files = sorted(Path(weights_path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors files in {weights_path}")
        count = 0

        def tensors() -> Iterator[tuple[str, Any]]:
            nonlocal count
            for path in files:
                for item in mapped_tensors(path):
                    count += 1
                    yield item

        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        reload(weights_iterator=tensors(), is_checkpoint_format=True)
        return count
