"""``vitdex searches ...``: Save similarity queries by name and run them again."""

from __future__ import annotations

from typing import Any

import click

from vitdex.cli.catalog import build_filter, filter_options, print_results, split_examples
from vitdex.cli.common import Context, handle_errors, open_catalog, print_json, print_table


@click.group("searches")
def searches_group() -> None:
    """Save similarity queries by name and run them again."""


@searches_group.command("save")
@click.argument("name")
@click.option(
    "--id", "ids", type=int, multiple=True, required=True, help="A positive example (repeatable)."
)
@click.option(
    "--not", "negatives", multiple=True, metavar="ID", help="A negative example (repeatable)."
)
@click.option(
    "--negative-weight",
    type=click.FloatRange(0, 10),
    default=0.5,
    show_default=True,
    help="How much negatives count: mean cos(positives) - w * mean cos(negatives).",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Hits per run [default: 10; with --min-score, every hit above it].",
)
@click.option(
    "--min-score",
    type=float,
    help="Only hits scoring at least this (the score column: cosine for one example).",
)
@click.option("--space", help="Space to search (default: the default space of each run).")
@filter_options
@click.option("--replace", is_flag=True, help="Overwrite a saved search of that name.")
@click.option("--json", "as_json", is_flag=True, help="Print the saved search as JSON.")
@click.pass_obj
@handle_errors
def save(
    obj: Context,
    /,
    name: str,
    ids: tuple[int, ...],
    negatives: tuple[str, ...],
    negative_weight: float,
    k: int | None,
    min_score: float | None,
    space: str | None,
    replace: bool,
    as_json: bool,
    **filters: Any,
) -> None:
    """Save a query by NAME: its examples (catalog ids), filters, space and cut-off.

    Every example makes ONE query when it runs (as `vitdex similar --together`). A saved
    search refers to photos by catalog id only: a photo file that is not indexed cannot be
    saved (index it, then give its id).
    """
    from vitdex.search.saved import SavedSearches
    from vitdex.search.service import SearchService

    negative_ids, negative_files = split_examples(negatives)
    if negative_files:
        raise click.BadParameter(
            f"{negative_files[0]}: a saved search refers to catalog ids only, not files "
            "(index the photo, then give its id)",
            param_hint="--not",
        )
    settings = obj.settings
    saved = SavedSearches(SearchService(settings, open_catalog(settings)))
    shown, created = saved.save(
        name,
        image_ids=ids,
        negative_ids=negative_ids,
        negative_weight=negative_weight,
        min_score=min_score,
        k=k if k is not None or min_score is not None else 10,
        space=space,
        filter=build_filter(**filters),
        replace=replace,
    )
    if as_json:
        print_json(shown)
        return
    click.echo(f"{'saved' if created else 'replaced'} search {shown['name']!r} (id {shown['id']})")


@searches_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_(obj: Context, as_json: bool) -> None:
    """The saved searches, by name."""
    from vitdex.search.saved import SavedSearches
    from vitdex.search.service import SearchService

    rows = SavedSearches(SearchService(obj.settings, open_catalog(obj.settings))).list()
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no saved searches (vitdex searches save NAME --id N ...)")
        return
    print_table(
        "saved searches",
        ("id", "name", "examples", "min score", "k", "space", "filters"),
        [_row(r) for r in rows],
        right={"id", "k", "min score"},
    )


def _row(saved: dict[str, Any]) -> tuple[str, ...]:
    """A saved search as one table row: what it searches for, shortly."""
    query = saved["query"]
    examples = " ".join(
        [*(f"+{i}" for i in query.get("image_ids", [])), *(f"-{i}" for i in query["negative_ids"])]
    )
    filters = ", ".join(
        f"{key}={value}" for key, value in (query.get("filter") or {}).items() if value
    )
    min_score = query.get("min_score")
    return (
        str(saved["id"]),
        saved["name"],
        examples,
        "" if min_score is None else f"{min_score:g}",
        "all" if query.get("k") is None else str(query["k"]),
        query.get("space") or "default",
        filters,
    )


@searches_group.command("run")
@click.argument("name")
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=None,
    help="Hits to show [default: the saved search's].",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many hits.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def run(obj: Context, name: str, k: int | None, offset: int, as_json: bool) -> None:
    """Run the saved search NAME (or id) against today's catalog."""
    from vitdex.search.saved import SavedSearches
    from vitdex.search.service import SearchService

    settings = obj.settings
    service = SearchService(settings, open_catalog(settings))
    query, result = SavedSearches(service).run(name, k=k, offset=offset, all_above=True)
    print_results(service, [result], query.filter, as_json=as_json, min_score=query.min_score)


@searches_group.command("delete")
@click.argument("name")
@click.pass_obj
@handle_errors
def delete(obj: Context, name: str) -> None:
    """Delete the saved search NAME (or id); the photos are not touched."""
    from vitdex.search.saved import SavedSearches
    from vitdex.search.service import SearchService

    saved = SavedSearches(SearchService(obj.settings, open_catalog(obj.settings)))
    gone = saved.delete(name)
    click.echo(f"deleted saved search {gone['name']!r} (id {gone['id']})")
