"""The tiny CPU models and their tasks, built offline (`dapo make-tiny-model DIR [--task NAME]`).

- `dapo.tiny.model.build_untrained_model(out_dir, seed)`: random-weight Qwen2-architecture model + tokenizer.
- `dapo.tiny.task`: 2-digit addition problems, the seeded train/test split, verl/NeMo rows.
- `dapo.tiny.column_task`: the reasoning task, the same problems answered column by column, then `Answer: N`.
- `dapo.tiny.tasks`: the two tasks by name (`addition`, `column-addition`) and what the warm start needs.
- `dapo.tiny.sft.make_tiny_model(out_dir, seed, task=...)`: the above plus the task's warm start
  ("forgot to carry"; for column-addition also "re-checks its work", started from examples/tiny-model).
- `dapo.tiny.evaluate.evaluate_accuracy(model_dir, rows, greedy, num_samples)`: exact-match accuracy.

Submodules import torch and transformers lazily; importing this package does not.
"""
