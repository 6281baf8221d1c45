"""Silence diffusers' and transformers' own progress bars and chatter while they load."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """No per-component progress bars or info messages inside the block.

    vitdex draws its own progress; the libraries' bars would interleave with it.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = []
    for lib in (diffusers_logging, transformers_logging):
        saved.append((lib, lib.get_verbosity(), lib.is_progress_bar_enabled()))
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()
