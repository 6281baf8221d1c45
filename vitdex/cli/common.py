"""What every command module shares: the group's context, error handling, output, progress.

Kept light to import (no pydantic, SQLAlchemy or torch at module level): ``vitdex --help``
and every command's start-up pay for what is imported here.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vitdex.errors import VitdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from vitdex.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)
out_console = Console()

#: A catalog image id: SQL BIGINT, positive.
IMAGE_ID = click.IntRange(1, 2**63 - 1)


@dataclass
class Context:
    """What the group's options resolve to, shared by every command."""

    #: The global flags given (``None`` where not), by settings field name.
    overrides: dict[str, Any]
    verbose: int
    #: Whether the data folder was chosen (``--home`` or ``VITDEX_HOME``), not defaulted.
    home_given: bool = False

    @functools.cached_property
    def settings(self) -> Settings:
        """This process's settings: the environment with the flags on top.

        Built once, on first use (so ``--help`` works whatever the environment holds,
        and a bad setting fails inside a command, as one line), and handed to everything
        the command runs, the jobs it runs here included.
        """
        return self.settings_with()

    def settings_with(self, **changes: Any) -> Settings:
        """Settings from the environment with the flags, then ``changes``, on top."""
        from vitdex.config import load_settings

        return load_settings(**{**self.overrides, **changes})

    def flag_environment(self) -> dict[str, str]:
        """The flags given, as the ``VITDEX_*`` variables that set the same: for what
        builds its own settings from the environment (the API's app factory, which
        uvicorn calls by import string in each of its processes)."""
        return {f"VITDEX_{k.upper()}": str(v) for k, v in self.overrides.items() if v is not None}


def handle_errors(func: F) -> F:
    """Turn a :class:`VitdexError` into a one-line message and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VitdexError as exc:
            # click.echo never wraps lines (rich would, at 80 columns off a terminal).
            click.secho("error: ", fg="red", bold=True, err=True, nl=False)
            click.echo(exc.message, err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; everything committed so far is kept", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def print_line(text: str, *, style: str | None = None) -> None:
    """One line on stdout: through rich on a terminal (``style``, wrapped to its width);
    off one, as it is, never wrapped or cut, so a pipe or a log gets whole paths."""
    if out_console.is_terminal:
        out_console.print(text, style=style, markup=False, highlight=False)
    else:
        click.echo(text)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    fold: Collection[str] = (),
    right: Collection[str] = (),
) -> None:
    """A table on stdout. On a terminal, a rich table fitted to its width, the ``fold``
    columns wrapped and the others cut; off one, the title, then the header and each row
    as tab-separated lines, nothing cut (a width of 80 columns would cut paths)."""
    if not out_console.is_terminal:
        click.echo(title)
        for row in (columns, *rows):
            click.echo("\t".join(row))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in right else "left",
            overflow="fold" if col in fold else "ellipsis",
        )
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


def open_catalog(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the settings' catalog, migrated; one engine per process and URL."""
    from vitdex.db.jobs import catalog_sessions

    return catalog_sessions(settings.storage.resolved_database_url)


# ------------------------------------------------------------------ progress


class RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task: Task) -> Text:
        """The task's speed as img/s."""
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} img/s" if speed else "   -- img/s", style="cyan")


class BarProgress:
    """Draws the index run on stderr: a counter while scanning, then a bar with ETA."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._scan: TaskID | None = None
        self._work: TaskID | None = None

    def scanning(self, files: int) -> None:
        """Update the scan counter (throttled: every 100 files)."""
        if self._scan is None:
            self._scan = self._progress.add_task("scanning", total=None)
        if files % 100 == 0:
            self._progress.update(self._scan, completed=files, description="scanning")

    def begin(self, total: int) -> None:
        """Switch from scanning to the work bar."""
        if self._scan is not None:
            self._progress.update(self._scan, visible=False)
        self._work = self._progress.add_task("indexing", total=total)

    def advance(self, n: int) -> None:
        """Move the bar."""
        if self._work is not None:
            self._progress.advance(self._work, n)

    def stage(self, description: str, total: float | None = None) -> Callable[..., None]:
        """A new bar; returns ``update(completed, total=None, description=None)``."""
        task = self._progress.add_task(description, total=total)

        def update(
            completed: float, total: float | None = None, description: str | None = None
        ) -> None:
            self._progress.update(task, completed=completed, total=total, description=description)

        return update


class LineProgress:
    """The same reports as :class:`BarProgress`, as plain lines on stderr, for a log or a
    pipe: a bar cannot redraw there, so each stage says when it starts, then at most
    every ``every_s`` seconds how far it is, then when it is done."""

    def __init__(self, every_s: float = 5.0) -> None:
        self._every_s = every_s
        self._total = 0
        self._done = 0
        self._work = self.stage("indexing")
        self._scan = self.stage("scanning")

    def scanning(self, files: int) -> None:
        """Say how many files the scan has found, now and then."""
        self._scan(files)

    def begin(self, total: int) -> None:
        """The work starts: ``total`` items."""
        self._total = total
        self._work(0, total)

    def advance(self, n: int) -> None:
        """``n`` more items done."""
        self._done += n
        self._work(self._done, self._total)

    def stage(self, description: str, total: float | None = None) -> Callable[..., None]:
        """A new stage; returns ``update(completed, total=None, description=None)``."""
        last = float("-inf")
        state = {"description": description, "total": total}

        def update(
            completed: float, total: float | None = None, description: str | None = None
        ) -> None:
            nonlocal last
            state["description"] = description or state["description"]
            state["total"] = total if total is not None else state["total"]
            finished = state["total"] is not None and completed >= float(state["total"])
            now = time.monotonic()
            if not finished and now - last < self._every_s:
                return
            last = now
            shown = f"{completed:g}" + (f"/{state['total']:g}" if state["total"] else "")
            click.echo(f"{state['description']} {shown}", err=True)

        return update


def stage_updater(
    bar: BarProgress | LineProgress | None, description: str, total: float | None
) -> Callable[..., None]:
    """``bar.stage(...)``, or a no-op when there is no bar."""
    if bar is None:
        return lambda *_args, **_kwargs: None
    return bar.stage(description, total)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[BarProgress | LineProgress | None]:
    """What shows a long command's progress on stderr, or ``None`` when not ``enabled``:
    a :class:`BarProgress` on a terminal; off one, where a bar cannot redraw in place and
    would leave its frames in a log, a :class:`LineProgress` writing plain lines."""
    if not enabled:
        yield None
        return
    if not err_console.is_terminal:
        yield LineProgress()
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    with progress:
        yield BarProgress(progress)


def print_index_report(data: dict[str, Any], embedder: Any) -> None:
    """An index run's report (``IndexReport.to_dict()``) as a few lines on stdout."""
    parts = [
        f"scanned {data['scanned']}",
        f"embedded {data['embedded']}",
        f"unchanged {data['unchanged']}",
    ]
    for key in ("reused", "moved", "deleted", "repaired"):
        if data[key]:
            parts.append(f"{key} {data[key]}")
    parts.append(f"failed {data['failed']}")
    print_line(", ".join(parts) + f" in {data['elapsed']:.1f} s")
    if data["embedded"]:
        print_line(
            f"{data['images_per_s']:.1f} images/s on {embedder.device} "
            f"({getattr(embedder, 'runtime_label', embedder.precision)});"
            " seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in data["timings"].items())
        )
    for failure in data["failures"][:20]:
        print_line(f"  failed: {failure['path']}: {failure['error']}")
    if len(data["failures"]) > 20:
        print_line(f"  ... and {len(data['failures']) - 20} more (vitdex status)")
