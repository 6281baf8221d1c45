"""``vitdex dataset ...``: curate DreamBooth instance sets from search results."""

from __future__ import annotations

import click


@click.group("dataset")
def dataset_group() -> None:
    """Curate, audit, edit and export DreamBooth datasets."""
