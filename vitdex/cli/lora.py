"""``vitdex lora ...``: LoRA files extracted from trained checkpoints."""

from __future__ import annotations

import click


@click.group("lora")
def lora_group() -> None:
    """LoRA files: extract one from a trained checkpoint and its base."""
