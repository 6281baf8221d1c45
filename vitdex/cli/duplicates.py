"""``vitdex duplicates ...``: Find exact and near-duplicate photos and review them.

``vitdex duplicates`` alone scans (in this process, with progress on stderr) and prints
the open groups; the subcommands list, show and decide groups. Nothing here deletes or
moves a file: keeping one member only marks the others as its duplicates.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from vitdex.cli.common import (
    IMAGE_ID,
    Context,
    handle_errors,
    open_catalog,
    print_json,
    print_line,
    progress_bar,
    stage_updater,
)

GROUP_ID = click.IntRange(1, 2**63 - 1)


def _print_group(group: dict[str, Any]) -> None:
    """A group as a few lines: its header, the reason, then one line per member."""
    where = (
        f"near, {group['space']} ≥ {group['threshold']:.2f}" if group["kind"] == "near" else "exact"
    )
    print_line(f"group {group['id']} ({where}) {group['status']}", style="bold")
    if group["reason"]:
        print_line(f"  suggested keeper {group['suggested_keeper_id']}: {group['reason']}")
    for m in group["members"]:
        mark = "*" if m["suggested"] else " "
        if m["kept"]:
            mark = "K"
        elif m["marked"]:
            mark = "x"
        dims = f"{m['width']}×{m['height']}" if m["width"] and m["height"] else "?"
        score = "" if m["score"] is None else f"{m['score']:.4f}"
        print_line(
            f"  {mark} {m['image_id']:>7} {score:>7} {dims:>11} {m['size']:>10}  {m['path']}"
        )


def _print_groups(groups: list[dict[str, Any]], total: int) -> None:
    for group in groups:
        _print_group(group)
    more = f" (showing {len(groups)})" if total > len(groups) else ""
    print_line(f"{total} groups{more}; * suggested keeper, K kept, x marked as duplicate")


@click.group("duplicates", invoke_without_command=True)
@click.option("--space", help="Space for near copies (default: the first configured one).")
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Cosine at or above which photos are near copies (default 0.90).",
)
@click.option("--no-near", is_flag=True, help="Only exact copies (the same bytes).")
@click.option("--no-exact", is_flag=True, help="Only near copies.")
@click.option(
    "-k",
    "k",
    type=click.IntRange(2, 1024),
    default=16,
    show_default=True,
    help="Neighbours asked per photo on the first pass.",
)
@click.option("--library", "libraries", type=int, multiple=True, help="Only this library id.")
@click.option("--folder", help="Only photos below this folder.")
@click.option("--taken-after", type=click.DateTime(), help="Only photos taken at or after.")
@click.option("--taken-before", type=click.DateTime(), help="Only photos taken before.")
@click.option("--camera-make", help="Only photos from this camera make (EXIF; any case).")
@click.option("--camera-model", help="Only photos from this camera model (EXIF; any case).")
@click.option("--label", help="Only photos with this predicted label in their top 5.")
@click.option("--tag", "tags", multiple=True, help="Only photos with this tag (repeatable).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Open groups printed after the scan.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report and groups as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.pass_context
@handle_errors
def duplicates_group(
    ctx: click.Context,
    space: str | None,
    threshold: float | None,
    no_near: bool,
    no_exact: bool,
    k: int,
    libraries: tuple[int, ...],
    folder: str | None,
    taken_after: datetime | None,
    taken_before: datetime | None,
    camera_make: str | None,
    camera_model: str | None,
    label: str | None,
    tags: tuple[str, ...],
    limit: int,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Find exact and near-duplicate photos and review them.

    Without a subcommand: scan now (decided groups are never reopened) and print the
    open groups, the suggested keeper marked.
    """
    if ctx.invoked_subcommand is not None:
        return
    from vitdex.filters import SearchFilter
    from vitdex.search.duplicate_scan import list_duplicate_groups, scan_duplicates

    if no_near and no_exact:
        raise click.UsageError("--no-near and --no-exact leave nothing to scan")
    obj: Context = ctx.obj
    flt = SearchFilter(
        library_ids=libraries,
        path_prefix=str(Path(folder).expanduser().resolve()) if folder else None,
        taken_after=taken_after,
        taken_before=taken_before,
        camera_make=camera_make,
        camera_model=camera_model,
        label=label,
        tags=tags,
    )
    settings = obj.settings
    sessions = open_catalog(settings)
    with progress_bar(not no_progress) as bar:
        update = stage_updater(bar, "finding duplicates", None)
        report = scan_duplicates(
            settings,
            sessions,
            space=space,
            threshold=threshold,
            exact=not no_exact,
            near=not no_near,
            k=k,
            filter=None if flt.is_empty() else flt,
            progress=lambda done, total: update(done, total=total),
        )
    total, _counts, groups = list_duplicate_groups(sessions, status="open", limit=limit)
    if as_json:
        print_json({"report": report.counts(), "total": total, "groups": groups})
        return
    click.echo(
        f"scanned {report.images} photos in {report.seconds:.1f}s: {report.exact_groups} exact "
        f"and {report.near_groups} near groups ({report.new_groups} new)",
        err=True,
    )
    _print_groups(groups, total)


@duplicates_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["open", "kept", "not_duplicates", "all"]),
    default="open",
    show_default=True,
)
@click.option("--kind", type=click.Choice(["exact", "near"]), help="Only this kind.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_cmd(
    obj: Context, status: str, kind: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """List duplicate groups (open ones by default) without scanning."""
    from vitdex.search.duplicate_scan import list_duplicate_groups

    total, counts, groups = list_duplicate_groups(
        open_catalog(obj.settings), status=status, kind=kind, limit=limit, offset=offset
    )
    if as_json:
        print_json({"total": total, "counts": counts, "groups": groups})
        return
    _print_groups(groups, total)


@duplicates_group.command("show")
@click.argument("group_id", type=GROUP_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def show_cmd(obj: Context, group_id: int, as_json: bool) -> None:
    """Show one group with its members."""
    from vitdex.search.duplicate_scan import get_duplicate_group

    group = get_duplicate_group(open_catalog(obj.settings), group_id)
    if as_json:
        print_json(group)
        return
    _print_group(group)


def _decide(obj: Context, group_id: int, as_json: bool, action: str, keeper: int | None) -> None:
    from vitdex.db.duplicates import get_group
    from vitdex.errors import ConfigError
    from vitdex.search.duplicate_scan import resolve_duplicate_group

    sessions = open_catalog(obj.settings)
    if keeper is not None:
        with sessions() as session:
            members = {m["image_id"] for m in get_group(session, group_id)["members"]}
        if keeper not in members:
            raise click.UsageError(
                f"image {keeper} is not a member of group {group_id} "
                f"(members: {', '.join(str(i) for i in sorted(members))})"
            )
    try:
        group = resolve_duplicate_group(sessions, group_id, action, keeper)
    except ConfigError as exc:  # a member removed meanwhile
        raise click.UsageError(exc.message) from None
    if as_json:
        print_json(group)
        return
    _print_group(group)


@duplicates_group.command("keep")
@click.argument("group_id", type=GROUP_ID)
@click.argument("image_id", type=IMAGE_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def keep_cmd(obj: Context, group_id: int, image_id: int, as_json: bool) -> None:
    """Keep IMAGE_ID of GROUP_ID; the other members are marked as its duplicates.

    No file is deleted or moved: marked photos are only hidden where asked.
    """
    _decide(obj, group_id, as_json, "keep", image_id)


@duplicates_group.command("not-duplicates")
@click.argument("group_id", type=GROUP_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def not_duplicates_cmd(obj: Context, group_id: int, as_json: bool) -> None:
    """Dismiss GROUP_ID as a false match: its photos are never grouped together again."""
    _decide(obj, group_id, as_json, "not_duplicates", None)


@duplicates_group.command("undo")
@click.argument("group_id", type=GROUP_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def undo_cmd(obj: Context, group_id: int, as_json: bool) -> None:
    """Reopen a decided GROUP_ID: the keeper is cleared and the marks lifted."""
    from vitdex.search.duplicate_scan import undo_duplicate_group

    group = undo_duplicate_group(open_catalog(obj.settings), group_id)
    if as_json:
        print_json(group)
        return
    _print_group(group)
