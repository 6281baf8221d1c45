"""``vitdex doctor``: check that the catalog and the vector stores agree, and repair them.

The catalog is the source of truth. A vector without an image row is a stray (deleted on
repair); an image whose vector is gone goes back to ``pending`` on repair, so the next
``vitdex index`` re-embeds it. A space built by another model than the configured one is
reported, never silently mixed: ``vitdex index --reembed`` rebuilds it.

Without ``--repair`` the doctor only reads. A repair takes the writing lease exclusively
(:mod:`vitdex.vectors.lease`): a running writer's batch is in the store before its SQL
commit and would look like strays, so with a writer running the repair waits a little,
then refuses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import repo
from vitdex.errors import ConfigError, ConflictError
from vitdex.indexer.models import normalize_model_id
from vitdex.indexer.repair import repair_space
from vitdex.indexer.spaces import configured_spaces
from vitdex.vectors.factory import open_store
from vitdex.vectors.lease import WriteLease
from vitdex.vectors.store import compare

#: What the report says of a disagreement seen while a writer runs.
IN_FLIGHT = (
    "another vitdex process is writing (index, library delete, migrate-store, reindex): "
    "some of this may be its work in flight; check again when it has finished"
)


def diagnose(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    repair: bool = False,
    wait: float = 10.0,
) -> dict[str, Any]:
    """Compare every space's store with the catalog; with ``repair``, fix what can be fixed.

    Returns a JSON-ready report: per space the stray and missing ids (first 20 of each),
    whether its model matches the configured one, and what was repaired; ``ok`` is true
    when nothing is wrong (after repair, when repairing); ``writers_active`` whether a
    writer was running (then strays may be its batch in flight). A repair waits up to
    ``wait`` seconds for running writers to finish, then raises :class:`ConflictError`.
    """
    lease = WriteLease.of(settings)
    if repair:
        if not lease.try_exclusive(wait):
            raise ConflictError(
                "another vitdex process is writing to this catalog (index, library delete, "
                "migrate-store or reindex); a repair now could delete its vectors in "
                "flight: run `vitdex doctor --repair` again when it has finished"
            )
        writers_active = False
    else:
        writers_active = lease.writers_active()
    try:
        report = _diagnose(settings, sessions, lease, repair=repair, writers_active=writers_active)
    finally:
        lease.release()
    return report


def _diagnose(
    settings: Settings,
    sessions: sessionmaker[Session],
    lease: WriteLease,
    *,
    repair: bool,
    writers_active: bool,
) -> dict[str, Any]:
    model_id = normalize_model_id(settings.model.model)
    try:
        resolved = configured_spaces(model_id, settings.model.model_revision, settings.model.spaces)
    except ConfigError:  # a spec the model cannot fill: `vitdex status` says which
        resolved = None
    # Unresolved (the model is not on this machine), relative specs match no space.
    configured = [s.name for s in resolved] if resolved is not None else settings.model.spaces
    spaces_out: list[dict[str, Any]] = []
    problems = 0
    with sessions() as session:
        known = {space.name for space in repo.list_spaces(session)}
        for space in repo.list_spaces(session):
            store = open_store(settings, space.name, space.dim, space.metric)
            try:
                catalog = np.asarray(repo.vector_image_ids(session, space.id), np.int64)
                stored = store.count()
                strays, missing = compare(store, catalog)
                entry: dict[str, Any] = {
                    "name": space.name,
                    "vectors_in_catalog": len(catalog),
                    "vectors_in_store": stored,
                    "strays": len(strays),
                    "missing": len(missing),
                    "stray_ids": strays[:20].tolist(),
                    "missing_ids": missing[:20].tolist(),
                    "model_id": space.model_id,
                    "model_matches": space.model_id == model_id,
                    "configured": space.name in configured,
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
                    if writers_active:
                        entry["advice"] = IN_FLIGHT
                    if repair:
                        repair_space(session, space, store, strays, missing, lease)
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
        unbuilt = [name for name in configured if name not in known]
    return {
        "ok": problems == 0,
        "repair": repair,
        "writers_active": writers_active,
        "backend": settings.vectors.vector_backend,
        "spaces": spaces_out,
        "configured_spaces_not_built": unbuilt,
    }
