"""``vitdex convert`` and ``vitdex checkpoints ...``: single-file checkpoints and their registry."""

from __future__ import annotations

import click


@click.group("checkpoints")
def checkpoints_group() -> None:
    """List, show and delete registered checkpoints."""
