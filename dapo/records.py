"""Names and records every service shares: run statuses, verifier names, and the run event record.

One definition of each, imported by whoever writes or reads them (the controller's store, API and loop,
the launcher, the trainer, the reward service, the config schema), so a status or a verifier cannot be
added in one place and missed in another. Imports neither torch nor any service: the controller and the
reward service use it without them. tests/unit/test_records.py checks that the config schema, the
controller's OpenAPI schema and the reward service accept exactly these names.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, get_args

RunStatus = Literal["pending", "running", "succeeded", "failed", "stopped"]
"""A run's lifecycle: pending until its loop starts, running, then one terminal status."""
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
TERMINAL_STATUSES: tuple[RunStatus, ...] = ("succeeded", "failed", "stopped")
"""Final statuses: once a run reaches one it never changes (dapo_controller.store enforces it)."""

VerifierName = Literal["math_verify", "dapo", "dapo_boxed"]
"""Answer checkers of the reward service: math-verify, DAPO's `Answer:` rule, DAPO's last-\\boxed{} rule."""
VERIFIERS: tuple[VerifierName, ...] = get_args(VerifierName)

EVENT_FIELDS = ("kind", "message", "time")
"""Fields every run event has; a writer may add more (`source`, `rank`, ...)."""


def is_terminal(status: str) -> bool:
    """Whether a run with this status has ended."""
    return status in TERMINAL_STATUSES


def run_event(kind: str, message: str, **fields: Any) -> dict[str, Any]:
    """A run event {"kind", "message", "time": now, **fields}, as the events stream stores it."""
    clash = set(fields) & set(EVENT_FIELDS)
    if clash:
        raise ValueError(f"run event fields {sorted(clash)} are set by run_event itself")
    return {"kind": kind, "message": message, "time": time.time(), **fields}


def stream_entry(record: dict[str, Any]) -> dict[str, str]:
    """The XADD fields of a record on a run's events or metrics stream: one field `data`, JSON."""
    return {"data": json.dumps(record)}


def event_entry(kind: str, message: str, **fields: Any) -> dict[str, str]:
    """`stream_entry(run_event(...))`: what a writer appends to `keys.events_stream(run_id)`."""
    return stream_entry(run_event(kind, message, **fields))
