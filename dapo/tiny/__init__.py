"""The tiny CPU model and its task, built offline (`dapo make-tiny-model DIR`).

- `dapo.tiny.model.build_untrained_model(out_dir, seed)`: random-weight Qwen2-architecture model + tokenizer.
- `dapo.tiny.task`: 2-digit addition problems, the seeded train/test split, verl/NeMo rows.
- `dapo.tiny.sft.make_tiny_model(out_dir, seed)`: the above plus the "forgot to carry" warm start.
- `dapo.tiny.evaluate.evaluate_accuracy(model_dir, rows, greedy, num_samples)`: exact-match accuracy.

Submodules import torch and transformers lazily; importing this package does not.
"""
