"""``vitdex searches ...``: Save similarity queries by name and run them again."""

from __future__ import annotations

import click


@click.group("searches")
def searches_group() -> None:
    """Save similarity queries by name and run them again."""
