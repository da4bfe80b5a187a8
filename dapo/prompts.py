"""How a prompt's chat messages reach the rollout server, as `policy.tokenizer.chat_template` and
`data.use_chat_template` say (NeMo RL's meanings):

- `use_chat_template: false`, or `chat_template: null` (NeMo's passthrough template): the messages'
  contents joined, sent as plain text;
- `chat_template: "default"`: the messages, rendered by the rollout server with the tokenizer's template;
- any other `chat_template` (a Jinja template, or a path ending in `.jinja`): rendered here, sent as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

Messages = Sequence[dict[str, str]]


def passthrough(messages: Messages) -> str:
    """NeMo RL's passthrough template: the contents, in order, with nothing between them."""
    return "".join(m["content"] for m in messages)


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = Path(template).read_text() if template.endswith(".jinja") else template
    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)


def render_text(messages: Messages, chat_template: str | None, use_chat_template: bool) -> str | None:
    """The prompt as plain text, or None when the rollout server's tokenizer template renders it."""
    if not use_chat_template or chat_template is None:
        return passthrough(messages)
    if chat_template == "default":
        return None
    return str(_compiled(chat_template).render(messages=list(messages), add_generation_prompt=True))
