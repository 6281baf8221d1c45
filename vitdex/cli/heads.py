"""``vitdex heads ...``: train classifiers on stored vectors and label the library.
(Filled in by the heads work.)"""

from __future__ import annotations

import click


@click.group("heads")
def heads_group() -> None:
    """Your own labels: linear classifiers trained on the stored vectors."""
