"""Runs inside vLLM's worker process (passed as `worker_extension_cls`): reload weights from a directory.

vLLM's own `reload_weights(weights_path=...)` goes through the model loader, which a server started with
`load_format="dummy"` (architecture only, `--wait-for-weights`) does not have; feeding the tensors of a
staged safetensors directory as an iterator works with every load format, on CPU and GPU alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


class WeightReloadExtension:
    """Mixed into vLLM's worker class; `self` is the worker."""

    model_runner: Any

    def dapo_reload_weights(self, weights_path: str) -> int:
        """Load every tensor of the safetensors files in `weights_path` in place; return their count."""
        from safetensors import safe_open

        files = sorted(Path(weights_path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors files in {weights_path}")
        count = 0

        def tensors() -> Iterator[tuple[str, Any]]:
            nonlocal count
            for path in files:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                        count += 1
                        yield name, f.get_tensor(name)

        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        reload(weights_iterator=tensors(), is_checkpoint_format=True)
        return count
