"""``vitdex heads ...``: train classifiers on stored vectors and label the library.

A head is trained from tags (``--from-tags a,b``) or from a folder with one subfolder per
class (``--from-folders DIR``) on the vectors already in the catalog's store, so neither
training nor labelling runs the model. Its labels are filters (``--head-label HEAD:LABEL``).
"""

from __future__ import annotations

from typing import Any

import click

from vitdex.cli.common import (
    IMAGE_ID,
    Context,
    handle_errors,
    open_catalog,
    print_json,
    print_line,
    print_table,
    progress_bar,
    stage_updater,
)


def _print_report(head: dict[str, Any]) -> None:
    """Accuracy, a per-class table and the confusion matrix of a head's held-out test."""
    report = head["report"]
    print_line(
        f"head {head['name']} on {head['space']} ({head['model_id']}): "
        f"held-out accuracy {report['accuracy']:.3f} on {report['test_count']} photos "
        f"(trained on {report['train_count']})",
        style="bold",
    )
    print_table(
        "per class",
        ["class", "precision", "recall", "f1", "support"],
        (
            [
                c["name"],
                f"{c['precision']:.3f}",
                f"{c['recall']:.3f}",
                f"{c['f1']:.3f}",
                str(c["support"]),
            ]
            for c in report["classes"]
        ),
        right={"precision", "recall", "f1", "support"},
    )
    classes = head["classes"]
    print_table(
        "confusion (rows: true class, columns: predicted)",
        ["true \\ predicted", *classes],
        (
            [cls, *(str(n) for n in row)]
            for cls, row in zip(classes, report["confusion"], strict=True)
        ),
        right=set(classes),
    )
    for note in report.get("notes", []):
        print_line(f"note: {note}")


@click.group("heads")
def heads_group() -> None:
    """Your own labels: linear classifiers trained on the stored vectors."""


@heads_group.command("train")
@click.argument("name")
@click.option("--space", help="Space to train on (default: the first configured one).")
@click.option("--from-tags", help="Comma-separated tags, one class each (one tag: tag vs other).")
@click.option(
    "--from-folders",
    "from_folder",
    type=click.Path(file_okay=False),
    help="A folder inside a library with one subfolder per class.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.05, 0.5),
    default=0.2,
    show_default=True,
    help="Share of the examples held out to measure the head.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of split and sample.")
@click.option("--replace", is_flag=True, help="Retrain a head of that name (its corrections help).")
@click.option("--json", "as_json", is_flag=True, help="Print the head and its report as JSON.")
@click.pass_obj
@handle_errors
def train_cmd(
    obj: Context,
    name: str,
    space: str | None,
    from_tags: str | None,
    from_folder: str | None,
    test_fraction: float,
    seed: int,
    replace: bool,
    as_json: bool,
) -> None:
    """Train head NAME on the stored vectors, print its held-out report and store it."""
    from vitdex.search.heads import train_head

    if bool(from_tags) == bool(from_folder):
        raise click.UsageError("give exactly one of --from-tags and --from-folders")
    tags = [t.strip() for t in (from_tags or "").split(",") if t.strip()]
    head = train_head(
        obj.settings,
        open_catalog(obj.settings),
        name,
        space=space,
        from_tags=tags,
        from_folder=from_folder,
        test_fraction=test_fraction,
        seed=seed,
        replace=replace,
    )
    if as_json:
        print_json(head)
        return
    _print_report(head)
    click.echo(f"label the library with: vitdex heads apply {name}", err=True)


@heads_group.command("apply")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.pass_obj
@handle_errors
def apply_cmd(obj: Context, name: str, as_json: bool, no_progress: bool) -> None:
    """Label every photo of the head's space (corrections are kept)."""
    from vitdex.search.heads import apply_head

    with progress_bar(not no_progress) as bar:
        update = stage_updater(bar, f"labelling with {name}", None)
        result = apply_head(
            obj.settings,
            open_catalog(obj.settings),
            name,
            progress=lambda done, total: update(done, total=total),
        )
    if as_json:
        print_json(result)
        return
    counts = ", ".join(f"{k} {v}" for k, v in result["label_counts"].items())
    print_line(
        f"labelled {result['labelled']} photos in {result['seconds']:.1f}s "
        f"({result['corrections_kept']} corrections kept): {counts}"
    )


@heads_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_cmd(obj: Context, as_json: bool) -> None:
    """List the heads with their space, classes and accuracy."""
    from vitdex.search.heads import list_heads

    heads = list_heads(open_catalog(obj.settings))
    if as_json:
        print_json({"heads": heads})
        return
    print_table(
        f"{len(heads)} heads",
        ["name", "space", "classes", "accuracy", "labelled", "applied"],
        (
            [
                h["name"],
                h["space"],
                ", ".join(h["classes"]),
                f"{h['report']['accuracy']:.3f}",
                str(h["labelled"]),
                h["applied_at"] or "never",
            ]
            for h in heads
        ),
        fold={"classes"},
        right={"accuracy", "labelled"},
    )


@heads_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def show_cmd(obj: Context, name: str, as_json: bool) -> None:
    """Show a head: its report, label counts and whether its model still matches."""
    from vitdex.search.heads import get_head

    head = get_head(open_catalog(obj.settings), name)
    if as_json:
        print_json(head)
        return
    _print_report(head)
    counts = ", ".join(f"{k} {v}" for k, v in head["label_counts"].items()) or "none"
    print_line(f"labels: {counts} ({head['corrections']} corrected)")
    if not head["model_matches"]:
        print_line("the space's model changed since training: retrain it", style="bold red")


@heads_group.command("labels")
@click.argument("name")
@click.option("--label", help="Only photos with this label (any case).")
@click.option(
    "--order",
    type=click.Choice(["uncertain", "confident", "recent"]),
    default="uncertain",
    show_default=True,
    help="uncertain: the head's closest calls first (what to review).",
)
@click.option("--source", type=click.Choice(["predicted", "corrected"]), help="Only these.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def labels_cmd(
    obj: Context,
    name: str,
    label: str | None,
    order: str,
    source: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List photos the head labelled, least certain first by default."""
    from vitdex.search.heads import head_labels

    page = head_labels(
        open_catalog(obj.settings),
        name,
        label=label,
        order=order,
        source=source,
        limit=limit,
        offset=offset,
        settings=obj.settings,
    )
    if as_json:
        print_json(page)
        return
    print_table(
        f"{page['total']} labels of {name} (showing {len(page['items'])})",
        ["id", "label", "confidence", "margin", "runner-up", "source", "path"],
        (
            [
                str(it["image_id"]),
                it["label"],
                f"{it['confidence']:.3f}",
                f"{it['margin']:.3f}",
                it["runner_up"] or "",
                it["source"],
                it["path"],
            ]
            for it in page["items"]
        ),
        fold={"path"},
        right={"id", "confidence", "margin"},
    )


@heads_group.command("correct")
@click.argument("name")
@click.argument("image_id", type=IMAGE_ID)
@click.argument("label", required=False)
@click.option("--clear", is_flag=True, help="Remove the correction; the next apply predicts it.")
@click.option("--json", "as_json", is_flag=True, help="Print the photo's label as JSON.")
@click.pass_obj
@handle_errors
def correct_cmd(
    obj: Context, name: str, image_id: int, label: str | None, clear: bool, as_json: bool
) -> None:
    """Set the label of photo IMAGE_ID under head NAME by hand (kept by every apply, and
    an example when the head is retrained)."""
    from vitdex.search.heads import correct_label

    if clear == (label is not None):
        raise click.UsageError("give a LABEL or --clear (not both)")
    item = correct_label(
        open_catalog(obj.settings), name, image_id, None if clear else label, settings=obj.settings
    )
    if as_json:
        print_json(item)
    elif item["label"] is None:
        print_line(f"{image_id}: correction removed; the next apply labels it")
    elif clear:
        print_line(f"{image_id}: correction removed; the head says {item['label']}")
    else:
        print_line(f"{image_id}: {item['label']} (corrected)")


@heads_group.command("delete")
@click.argument("name")
@click.pass_obj
@handle_errors
def delete_cmd(obj: Context, name: str) -> None:
    """Delete a head and every label it put on photos (corrections too)."""
    from vitdex.search.heads import delete_head

    delete_head(open_catalog(obj.settings), name)
    print_line(f"deleted head {name}")
