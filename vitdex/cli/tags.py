"""``vitdex tag ...``: Put tags on photos, take them off, list them.

``add`` and ``remove`` pick photos one of three ways: ``--id`` (repeatable), every photo
matching the filter options (``--all-matching``), or the photos similar to one
(``--like ID``, with ``--min-score`` and ``--k``; the filter options narrow it too).
Names compare ignoring case and spacing: ``Rex`` and ``rex`` are one tag.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vitdex.cli.common import (
    IMAGE_ID,
    Context,
    handle_errors,
    open_catalog,
    print_json,
    print_line,
    print_table,
)

if TYPE_CHECKING:
    from vitdex.config import Settings
    from vitdex.db.tags import TagStore
    from vitdex.filters import SearchFilter

F = TypeVar("F", bound=Callable[..., Any])

#: How many neighbours ``--like`` looks at unless told.
LIKE_K = 1000


def _selectors(func: F) -> F:
    """The options that pick photos, shared by ``add`` and ``remove``."""
    options = [
        click.option("--id", "ids", type=IMAGE_ID, multiple=True, help="A photo (repeatable)."),
        click.option(
            "--all-matching", is_flag=True, help="Every photo matching the filter options."
        ),
        click.option("--like", type=IMAGE_ID, help="The photos similar to this one (and it)."),
        click.option(
            "--min-score",
            type=float,
            default=None,
            help="With --like: only neighbours at least this similar (cosine).",
        ),
        click.option(
            "-k",
            "--k",
            "k",
            type=click.IntRange(1, 10_000),
            default=LIKE_K,
            show_default=True,
            help="With --like: how many neighbours to look at.",
        ),
        click.option("--space", help="With --like: the space to search (default: the first)."),
        click.option("--folder", help="Only photos below this folder."),
        click.option("--library", "libraries", type=int, multiple=True, help="Only this library."),
        click.option("--label", help="Only photos with this predicted label in their top 5."),
        click.option("--camera-make", help="Only photos from this camera make (any case)."),
        click.option("--camera-model", help="Only photos from this camera model (any case)."),
        click.option("--taken-after", type=click.DateTime(), help="Only photos taken at or after."),
        click.option("--taken-before", type=click.DateTime(), help="Only photos taken before."),
        click.option(
            "--tag", "tags", multiple=True, help="Only photos with this tag (repeatable)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filter(opts: dict[str, Any]) -> SearchFilter:
    from vitdex.filters import SearchFilter

    folder = opts["folder"]
    return SearchFilter(
        library_ids=tuple(opts["libraries"]),
        path_prefix=str(Path(folder).expanduser().resolve()) if folder else None,
        taken_after=opts["taken_after"],
        taken_before=opts["taken_before"],
        camera_make=opts["camera_make"],
        camera_model=opts["camera_model"],
        label=opts["label"],
        tags=tuple(opts["tags"]),
    )


def _like(settings: Settings, flt: SearchFilter, opts: dict[str, Any]) -> list[int]:
    """The photo ``--like`` names and its neighbours scoring at least ``--min-score``."""
    from vitdex.search.service import SearchService

    service = SearchService(settings, open_catalog(settings))
    (result,) = service.similar(
        ids=[opts["like"]], k=opts["k"], space=opts["space"], include_self=True, filter=flt
    )
    low = opts["min_score"]
    return [h.image_id for h in result.hits if low is None or h.score >= low]


def _picked(obj: Context, opts: dict[str, Any]) -> tuple[list[int] | None, SearchFilter | None]:
    """The ids or the filter the selector options name (exactly one way)."""
    flt = _filter(opts)
    ways = [bool(opts["ids"]), opts["all_matching"], opts["like"] is not None]
    if sum(ways) != 1:
        raise click.UsageError("pick photos one way: --id, --all-matching or --like")
    if opts["like"] is None and (opts["min_score"] is not None or opts["space"]):
        raise click.UsageError("--min-score and --space go with --like")
    if opts["ids"]:
        if not flt.is_empty():
            raise click.UsageError("filter options go with --all-matching or --like, not --id")
        return list(opts["ids"]), None
    if opts["all_matching"]:
        return None, flt
    return _like(obj.settings, flt, opts), None


def _notes(obj: Context, flt: SearchFilter | None, changed: int) -> None:
    """Say which filter value matched no photo when nothing changed."""
    if flt is None or changed or flt.is_empty():
        return
    from vitdex.db.facets import filter_misses

    with open_catalog(obj.settings)() as session:
        for miss in filter_misses(session, flt):
            click.secho("note: ", fg="yellow", bold=True, err=True, nl=False)
            click.echo(miss.message, err=True)


def _store(obj: Context) -> TagStore:
    from vitdex.db.tags import TagStore

    return TagStore(open_catalog(obj.settings))


def _photos(n: int) -> str:
    return f"{n} photo{'' if n == 1 else 's'}"


@click.group("tag")
def tag_group() -> None:
    """Put tags on photos, take them off, list them."""


@tag_group.command("add")
@click.argument("name")
@_selectors
@click.pass_obj
@handle_errors
def add(obj: Context, /, name: str, **opts: Any) -> None:
    """Put the tag NAME on photos (created, spelt as given, when new)."""
    ids, flt = _picked(obj, opts)
    tag, added = _store(obj).add(name, ids, flt)
    print_line(f"tagged {_photos(added)} {tag.name!r}; it is on {_photos(tag.count)}")
    _notes(obj, flt, added)


@tag_group.command("remove")
@click.argument("name")
@_selectors
@click.pass_obj
@handle_errors
def remove(obj: Context, /, name: str, **opts: Any) -> None:
    """Take the tag NAME off photos (the tag stays)."""
    ids, flt = _picked(obj, opts)
    tag, removed = _store(obj).remove(name, ids, flt)
    print_line(f"untagged {_photos(removed)} {tag.name!r}; it is on {_photos(tag.count)}")
    _notes(obj, flt, removed)


@tag_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_tags(obj: Context, as_json: bool) -> None:
    """Every tag with its number of photos."""
    tags = _store(obj).all()
    if as_json:
        print_json([{"id": t.id, "name": t.name, "count": t.count} for t in tags])
        return
    if not tags:
        print_line("no tags yet: vitdex tag add NAME --id ID")
        return
    rows = [(t.name, str(t.count)) for t in tags]
    print_table(f"{len(tags)} tags", ("tag", "photos"), rows, fold={"tag"}, right={"photos"})


@tag_group.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_obj
@handle_errors
def rename(obj: Context, old: str, new: str) -> None:
    """Rename the tag OLD to NEW; when a tag NEW exists, merge OLD into it."""
    tag, merged = _store(obj).rename(old, new)
    what = "merged into" if merged else "renamed to"
    print_line(f"{old!r} {what} {tag.name!r}, on {_photos(tag.count)}")


@tag_group.command("delete")
@click.argument("name")
@click.pass_obj
@handle_errors
def delete(obj: Context, name: str) -> None:
    """Delete the tag NAME and take it off every photo (the photos stay)."""
    removed = _store(obj).delete(name)
    print_line(f"deleted tag {name!r}; it was on {_photos(removed)}")


@tag_group.command("show")
@click.argument("image_id", type=IMAGE_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def show(obj: Context, image_id: int, as_json: bool) -> None:
    """The tags of the photo IMAGE_ID."""
    tags = _store(obj).of_image(image_id)
    if as_json:
        print_json({"image_id": image_id, "tags": tags})
        return
    print_line(", ".join(tags) if tags else f"photo {image_id} has no tags")
