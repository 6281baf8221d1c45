"""Which stored space a query means: by name, by relative spec, or the default.

Apart from the search service so that code that only needs the catalog's spaces (the
duplicate scan, curation, the API) does not import the model runtime with it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from vitdex.db import repo
from vitdex.db.models import Space
from vitdex.errors import ConfigError, NotFoundError
from vitdex.indexer.models import local_layer_count, normalize_model_id
from vitdex.indexer.spaces import resolve_spaces

__all__ = ["resolve_space"]


def resolve_space(session: Session, preferred: str, name: str | None) -> Space:
    """The space ``name``, or with None the ``preferred`` one (else the first there is).

    An empty catalog is :class:`NotFoundError`; an unknown name is a bad argument
    (:class:`ConfigError`) that lists the known ones.
    """
    spaces = repo.list_spaces(session)
    if not spaces:
        raise NotFoundError("the index is empty: run `vitdex index FOLDER` first")
    wanted = preferred if name is None else name
    found = next((s for s in spaces if s.name == wanted), None)
    if found is None and "/" in wanted:
        # A relative spec as configured (cls@2/3) names the space it resolved to on the
        # catalog's model (cls@8 on ViT-B/16), when that model's config is on this machine.
        resolved = _resolved_name(spaces[0], wanted)
        found = next((s for s in spaces if s.name == resolved), None)
    if found is not None:
        return found
    if name is None:
        return spaces[0]
    known = ", ".join(s.name for s in spaces)
    raise ConfigError(f"unknown space {name!r} (known spaces: {known})")


def _resolved_name(space: Space, spec: str) -> str | None:
    """The name ``spec`` resolves to on ``space``'s model, or None when it cannot be told."""
    layers = local_layer_count(normalize_model_id(space.model_id), space.model_revision or None)
    if layers is None:
        return None
    try:
        return resolve_spaces([spec], layers)[0].name
    except ConfigError:
        return None
