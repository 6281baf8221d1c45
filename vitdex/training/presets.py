"""Memory presets (``8gb``, ``12gb``, ``24gb``): training settings per base that fit a GPU.

Interface fixed for the rest of the training code; implemented in this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PRESETS", "apply_preset"]

PRESETS = ("8gb", "12gb", "24gb")


def apply_preset(options: Mapping[str, Any], version: str | None) -> dict[str, Any]:
    """``options`` with the preset's settings filled in where the caller set nothing.

    ``options["preset"]`` names the preset; without one ``options`` come back unchanged.
    """
    if not options.get("preset"):
        return dict(options)
    raise NotImplementedError
