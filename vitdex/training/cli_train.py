"""``vitdex train ...``: DreamBooth training runs."""

from __future__ import annotations

import click


@click.group("train")
def train_group() -> None:
    """Train Stable Diffusion on a dataset; resume and list runs."""
