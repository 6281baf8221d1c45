"""``vitdex tag ...``: Put tags on photos, take them off, list them."""

from __future__ import annotations

import click


@click.group("tag")
def tag_group() -> None:
    """Put tags on photos, take them off, list them."""
