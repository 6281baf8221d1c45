"""The body of a LoRA extraction request."""

from __future__ import annotations

from typing import Annotated

import msgspec

#: Mirrors vitdex.training.lora.MAX_RANK (the schema must not import the training side).
MAX_RANK = 1024

Rank = Annotated[int, msgspec.Meta(ge=1, le=MAX_RANK)]


class LoraExtractIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Extract a LoRA from a registered checkpoint against its registered base model."""

    #: Rank of the linear layers; alpha equals it (scale 1).
    rank: Rank
    #: Also extract the resnets' 3x3 convs at this rank (kohya's conv_dim).
    conv_rank: Rank | None = None
    #: Include the text encoder(s).
    text_encoder: bool = True
    #: Registry name (default: ``<checkpoint>-lora<rank>``); 409 when taken.
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
