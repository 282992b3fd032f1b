"""What ``backvault apply`` reports (one change per named item) and the steps that make the changes.

Shared by apply.py, apply_config.py and apply_notifications.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backvault.domain.errors import BackupServiceError

CREATE, UPDATE, UNCHANGED, ABSENT, DELETE, REFUSED, SKIPPED = (
    "create",
    "update",
    "unchanged",
    "absent",
    "delete",
    "refused",
    "skipped",
)


@dataclass(frozen=True)
class ApplyChange:
    """One item of the report: what happened (or would happen) to one named item."""

    kind: str  # location, sink, vault, endpoint, plan, selection
    name: str
    action: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        """Return the change as a JSON-ready object."""
        body = {"Kind": self.kind, "Name": self.name, "Action": self.action}
        if self.detail:
            body["Detail"] = self.detail
        return body


@dataclass
class ApplyReport:
    """Everything apply did or, with dry_run, would do."""

    dry_run: bool
    prune: bool
    changes: list[ApplyChange] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if the catalog was (or would be) changed."""
        return any(change.action in (CREATE, UPDATE, DELETE) for change in self.changes)

    def counts(self) -> dict[str, int]:
        """Return how many items got each action."""
        totals: dict[str, int] = {}
        for change in self.changes:
            totals[change.action] = totals.get(change.action, 0) + 1
        return totals

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready object."""
        return {
            "DryRun": self.dry_run,
            "Prune": self.prune,
            "Changed": self.changed,
            "Counts": self.counts(),
            "Changes": [change.to_dict() for change in self.changes],
        }


@dataclass
class Step:
    """A change to report and, unless it is ``unchanged``/``absent``, the call that makes it."""

    change: ApplyChange
    run: Callable[[], object] | None = None


def absent_step(kind: str, name: str, prune: bool, delete: Callable[[], object]) -> Step:
    """The step of an item the document does not declare: deleted with prune, else reported."""
    if prune:
        return Step(ApplyChange(kind, name, DELETE), delete)
    return Step(ApplyChange(kind, name, ABSENT, "not in the document; apply with prune to delete it"))


def run_all(actions: list[Callable[[], object]]) -> Callable[[], object]:
    """Return one call running ``actions`` in order."""

    def run() -> object:
        for action in actions:
            action()
        return None

    return run


@contextmanager
def at(where: str) -> Iterator[None]:
    """Prefix the message of a service error raised inside with the document path ``where``."""
    try:
        yield
    except BackupServiceError as error:
        if where in error.message:
            raise
        raise type(error)(f"{where}: {error.message}", **error.context) from None
