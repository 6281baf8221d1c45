"""``vitdex duplicates ...``: Find exact and near-duplicate photos and review them."""

from __future__ import annotations

import click


@click.group("duplicates")
def duplicates_group() -> None:
    """Find exact and near-duplicate photos and review them."""
