"""``vitdex doctor``: check that the catalog and the vector stores agree, and repair them.

The catalog is the source of truth. A vector without an image row is a stray (deleted on
repair); an image whose vector is gone goes back to ``pending`` on repair, so the next
``vitdex index`` re-embeds it. A space built by another model than the configured one is
reported, never silently mixed: ``vitdex index --reembed`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import repo
from vitdex.indexer.models import normalize_model_id
from vitdex.search.factory import open_store


def diagnose(
    settings: Settings, sessions: sessionmaker[Session], *, repair: bool = False
) -> dict[str, Any]:
    """Compare every space's store with the catalog; with ``repair``, fix what can be fixed.

    Returns a JSON-ready report: per space the stray and missing ids (first 20 of each),
    whether its model matches the configured one, and what was repaired; ``ok`` is true
    when nothing is wrong (after repair, when repairing).
    """
    model_id = normalize_model_id(settings.model.model)
    spaces_out: list[dict[str, Any]] = []
    problems = 0
    with sessions() as session:
        known = {space.name for space in repo.list_spaces(session)}
        for space in repo.list_spaces(session):
            store = open_store(settings, space.name, space.dim, space.metric)
            try:
                catalog = np.asarray(repo.vector_image_ids(session, space.id), np.int64)
                stored = np.unique(store.ids())
                strays = np.setdiff1d(stored, catalog, assume_unique=True)
                missing = np.setdiff1d(catalog, stored, assume_unique=True)
                entry: dict[str, Any] = {
                    "name": space.name,
                    "vectors_in_catalog": len(catalog),
                    "vectors_in_store": len(stored),
                    "strays": len(strays),
                    "missing": len(missing),
                    "stray_ids": strays[:20].tolist(),
                    "missing_ids": missing[:20].tolist(),
                    "model_id": space.model_id,
                    "model_matches": space.model_id == model_id,
                    "configured": space.name in settings.model.spaces,
                    "repaired": False,
                }
                if not entry["model_matches"] and entry["configured"]:
                    entry["advice"] = (
                        f"built by {space.model_id!r} but VITDEX_MODEL is {model_id!r}: run "
                        "`vitdex index --reembed PATH` or set VITDEX_MODEL back"
                    )
                    problems += 1
                if len(strays) or len(missing):
                    problems += 1
                    if repair:
                        if len(strays):
                            store.delete(strays)
                        if len(missing):
                            ids = [int(i) for i in missing]
                            repo.remove_vector_rows(session, ids, space.id)
                            repo.set_pending(session, ids)
                        session.commit()
                        store.flush()
                        entry["repaired"] = True
                        problems -= 1
                        if len(missing):
                            entry["advice"] = (
                                f"{len(missing)} images will be re-embedded by the next "
                                "`vitdex index` run"
                            )
                spaces_out.append(entry)
            finally:
                store.close()
        unbuilt = [name for name in settings.model.spaces if name not in known]
    return {
        "ok": problems == 0,
        "repair": repair,
        "backend": settings.vectors.vector_backend,
        "spaces": spaces_out,
        "configured_spaces_not_built": unbuilt,
    }
