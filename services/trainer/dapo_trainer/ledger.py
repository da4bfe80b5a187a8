"""The ledger of applied batches: which TrainBatch produced which policy version.

It is saved in every checkpoint, so after a restore the trainer knows exactly which batches the
restored parameters contain: a redelivered batch found here is acknowledged and skipped, one not
found is applied (again, on top of the restored state).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LedgerEntry:
    batch_id: str
    version: int  # the policy version this batch produced
    step: int  # the controller's step number carried by the batch
    stream_id: str  # the Redis Stream entry id it arrived as


@dataclass
class Ledger:
    entries: list[LedgerEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = {e.batch_id for e in self.entries}

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._ids

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: LedgerEntry) -> None:
        if entry.batch_id in self._ids:
            raise ValueError(
                f"batch {entry.batch_id} is already in the ledger (version {self.version_of(entry.batch_id)})"
            )
        self.entries.append(entry)
        self._ids.add(entry.batch_id)

    def version_of(self, batch_id: str) -> int | None:
        return next((e.version for e in self.entries if e.batch_id == batch_id), None)

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.entries]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> Ledger:
        return cls([LedgerEntry(**row) for row in rows])
