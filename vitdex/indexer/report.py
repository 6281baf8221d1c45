"""What an index run tells the outside: progress as it goes, and its report at the end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

__all__ = ["IndexReport", "NullProgress", "ProgressSink", "job_counts", "job_done"]


class ProgressSink(Protocol):
    """Receives progress; the CLI draws a bar, jobs write it to SQL."""

    def scanning(self, files: int) -> None:
        """``files`` image files found so far."""

    def begin(self, total: int) -> None:
        """``total`` files need work (hashing, maybe embedding)."""

    def advance(self, n: int) -> None:
        """``n`` more files are done."""


class NullProgress:
    """Progress that goes nowhere."""

    def scanning(self, files: int) -> None:
        """Ignore."""

    def begin(self, total: int) -> None:
        """Ignore."""

    def advance(self, n: int) -> None:
        """Ignore."""


@dataclass
class IndexReport:
    """What an index run did; ``vitdex index --json`` prints it."""

    libraries: list[str] = field(default_factory=list)
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0
    moved: int = 0
    failed: int = 0
    deleted: int = 0
    repaired: int = 0
    #: The start-up check found another writer running and left the stores alone.
    repair_skipped: bool = False
    cancelled: bool = False
    elapsed: float = 0.0
    images_per_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    spaces: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    job_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def job_done(report: IndexReport) -> int:
    """How many files of the run's total its job row counts as done."""
    return report.embedded + report.reused + report.moved + report.failed


def job_counts(report: IndexReport) -> dict[str, Any]:
    """The counts a run's job row shows."""
    keys = ("scanned", "new", "changed", "unchanged", "embedded", "reused", "moved")
    counts: dict[str, Any] = {key: getattr(report, key) for key in keys}
    counts.update(failed=report.failed, deleted=report.deleted, repaired=report.repaired)
    return counts
