"""The ``vitdex`` command group: its global flags, and every command family registered.

The flags go over the ``VITDEX_*`` environment into one settings object per process
(:class:`~vitdex.cli.common.Context`), which every command, and every job a command runs
or a worker takes, is handed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from vitdex.cli.catalog import classify, doctor, index, similar, status
from vitdex.cli.checkpoints import checkpoints_group, convert_command
from vitdex.cli.common import Context
from vitdex.cli.dataset import dataset_group
from vitdex.cli.db import db_group
from vitdex.cli.demo import demo
from vitdex.cli.duplicates import duplicates_group
from vitdex.cli.heads import heads_group
from vitdex.cli.lora import lora_group
from vitdex.cli.model import export_model_command, model_group
from vitdex.cli.searches import searches_group
from vitdex.cli.serve import serve_command, worker_command
from vitdex.cli.store import migrate_store_cmd, reindex
from vitdex.cli.tags import tag_group
from vitdex.cli.train import train_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), help="Data folder [VITDEX_HOME].")
@click.option("--database-url", help="SQLAlchemy URL of the catalog [VITDEX_DATABASE_URL].")
@click.option("--model", help="Hub id or local folder of a ViT checkpoint [VITDEX_MODEL].")
@click.option("--spaces", help="Layer specs, e.g. cls,cls@2/3 or cls,cls@8 [VITDEX_SPACES].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[VITDEX_DEVICE]")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "torch", "onnxruntime", "openvino"]),
    help="What runs the model; auto measures the installed ones once [VITDEX_RUNTIME].",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    help="int8 on onnxruntime and openvino only [VITDEX_PRECISION]",
)
@click.option("--batch-size", type=int, help="Images per forward pass [VITDEX_BATCH_SIZE].")
@click.option(
    "--redis-url",
    help="Redis of the job queue, for serve, worker and train --background [VITDEX_REDIS_URL].",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="vitdex")
@click.pass_context
def cli(
    ctx: click.Context,
    home: Path | None,
    database_url: str | None,
    model: str | None,
    spaces: str | None,
    device: str | None,
    runtime: str | None,
    precision: str | None,
    batch_size: int | None,
    redis_url: str | None,
    verbose: int,
) -> None:
    """vitdex: index photo folders with ViT embeddings and search them."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(
        overrides={
            "home": home,
            "database_url": database_url,
            "model": model,
            "spaces": spaces,
            "device": device,
            "runtime": runtime,
            "precision": precision,
            "batch_size": batch_size,
            "redis_url": redis_url,
        },
        verbose=verbose,
        home_given=home is not None or bool(os.environ.get("VITDEX_HOME")),
    )


for _command in (
    index,
    similar,
    classify,
    status,
    doctor,
    reindex,
    migrate_store_cmd,
    db_group,
    demo,
    serve_command,
    worker_command,
    dataset_group,
    train_group,
    checkpoints_group,
    convert_command,
    model_group,
    export_model_command,
    duplicates_group,
    tag_group,
    searches_group,
    heads_group,
    lora_group,
):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``vitdex`` console script."""
    cli(prog_name="vitdex")


if __name__ == "__main__":
    main()
