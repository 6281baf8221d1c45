"""``vitdex dataset set|caption|captions``: a dataset's words, crop mode and captions."""

from __future__ import annotations

from typing import Any

import click

from vitdex.cli.common import (
    IMAGE_ID,
    Context,
    handle_errors,
    open_catalog,
    print_json,
    print_table,
)

_ROLES = click.Choice(["instance", "class"])
_CROP_MODES = click.Choice(["square", "buckets"])


@click.command("set")
@click.argument("dataset")
@click.option("--trigger-word", help='The subject\'s rare token, e.g. "sks" ("" clears it).')
@click.option("--class-word", help='The subject\'s class, e.g. "dog" ("" clears it).')
@click.option(
    "--crop-mode",
    type=_CROP_MODES,
    help="How the export cuts photos: the subject's square, or aspect-ratio buckets.",
)
@click.option("--prompt", help="Instance caption (default captions of instance images).")
@click.option("--class-prompt", help='Class caption ("" clears it).')
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def set_cmd(
    obj: Context,
    dataset: str,
    trigger_word: str | None,
    class_word: str | None,
    crop_mode: str | None,
    prompt: str | None,
    class_prompt: str | None,
    as_json: bool,
) -> None:
    """Change DATASET's trigger word, class word, crop mode or prompts.

    A prompt made from the old words ("a photo of sks dog") follows new ones unless
    --prompt is given too.
    """
    from vitdex.training.curate import update_dataset

    result = update_dataset(
        open_catalog(obj.settings),
        dataset,
        trigger_word=trigger_word,
        class_word=class_word,
        crop_mode=crop_mode,
        prompt=prompt,
        class_prompt=class_prompt,
    )
    if as_json:
        print_json(result)
        return
    click.echo(f"dataset {result['id']} {result['name']!r}")
    for key in ("trigger_word", "class_word", "crop_mode", "prompt", "class_prompt"):
        click.echo(f"  {key.replace('_', ' ')}: {result[key] if result[key] else '-'}")


@click.command("caption")
@click.argument("dataset")
@click.argument("image_id", type=IMAGE_ID)
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Drop the caption set by hand (back to the prompt).")
@click.option(
    "--role",
    type=_ROLES,
    default="instance",
    show_default=True,
    help="Which item of the image: its instance or its class candidate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def caption_cmd(
    obj: Context,
    dataset: str,
    image_id: int,
    text: str | None,
    clear: bool,
    role: str,
    as_json: bool,
) -> None:
    """Caption IMAGE_ID of DATASET by hand with TEXT (or --clear it); the export writes it."""
    from vitdex.training.curate import set_caption

    if clear == (text is not None):
        raise click.UsageError("give either TEXT or --clear")
    item = set_caption(open_catalog(obj.settings), dataset, image_id, text, role=role)
    if as_json:
        print_json(item)
        return
    click.echo(f"{item['role']} image {item['image_id']} ({item['caption_source']}): ")
    click.echo(f"  {item['caption']}")


@click.group("captions")
def captions_group() -> None:
    """List and find/replace the captions of a dataset."""


def _source(row: dict[str, Any]) -> str:
    return "own" if row["caption_source"] == "item" else "default"


@captions_group.command("list")
@click.argument("dataset")
@click.option("--role", type=_ROLES, help="Only instance or only class items.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_cmd(obj: Context, dataset: str, role: str | None, as_json: bool) -> None:
    """Every item's caption: its own (set by hand) or the default (the prompt)."""
    from vitdex.training.curate import list_captions

    result = list_captions(open_catalog(obj.settings), dataset, role=role)
    if as_json:
        print_json(result)
        return
    rows = [
        (
            row["role"],
            str(row["image_id"]),
            "yes" if row["included"] else "-",
            _source(row),
            row["caption"] or "",
        )
        for row in result["captions"]
    ]
    columns = ("role", "id", "in", "source", "caption")
    print_table(f"captions of dataset {result['dataset_id']}", columns, rows, fold={"caption"})


@captions_group.command("replace")
@click.argument("dataset")
@click.argument("find")
@click.argument("replace")
@click.option("--regex", is_flag=True, help="FIND is a regular expression (REPLACE may use \\1).")
@click.option("--role", type=_ROLES, help="Only instance or only class items.")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def replace_cmd(
    obj: Context,
    dataset: str,
    find: str,
    replace: str,
    regex: bool,
    role: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Replace FIND with REPLACE in every caption of DATASET (default ones included).

    A caption that ends up equal to the prompt goes back to following it.
    """
    from vitdex.training.curate import replace_captions

    result = replace_captions(
        open_catalog(obj.settings),
        dataset,
        find,
        replace,
        regex=regex,
        role=role,
        dry_run=dry_run,
    )
    if as_json:
        print_json(result)
        return
    for change in result["examples"]:
        click.echo(f"{change['role']} image {change['image_id']}:")
        click.echo(f"  - {change['before']}")
        click.echo(f"  + {change['after']}")
    shown = len(result["examples"])
    more = f" (first {shown} shown)" if shown < result["changed"] else ""
    verb = "would change" if dry_run else "changed"
    click.echo(f"{verb} {result['changed']} of {result['scanned']} captions{more}")
