"""What the catalog and the stores hold, for ``vitdex status`` (and the API later)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import repo
from vitdex.indexer.spaces import describe_configured
from vitdex.vectors.factory import open_store


def collect_status(
    settings: Settings, sessions: sessionmaker[Session], *, max_failed: int = 50
) -> dict[str, Any]:
    """Counts per status, per space (catalog rows and store vectors), libraries, failures,
    and under ``configured`` what each configured layer spec resolves to (the space it
    fills, its layer) for the configured model (see
    :func:`vitdex.indexer.spaces.describe_configured`)."""
    with sessions() as session:
        by_status = repo.status_counts(session)
        vectors = repo.vector_counts(session)
        spaces = []
        for space in repo.list_spaces(session):
            store = open_store(settings, space.name, space.dim, space.metric)
            try:
                described = store.describe()
            finally:
                store.close()
            spaces.append(
                {
                    "name": space.name,
                    "vectors": vectors.get(space.id, 0),
                    "store_count": described.get("count"),
                    "model_id": space.model_id,
                    "model_revision": space.model_revision,
                    "layer": space.layer,
                    "dim": space.dim,
                    "metric": space.metric,
                    # Which runtime and precision first filled it, and the agreement
                    # with torch fp32 it asks of later writers (None: 0.999).
                    "runtime": space.runtime,
                    "min_agreement": space.min_agreement,
                    "memory": _memory(described),
                    "store": described,
                }
            )
        failures = [
            {"id": image_id, "path": path, "error": error}
            for image_id, path, error in repo.failed_images(session, max_failed)
        ]
        libraries = [
            {
                "id": lib.id,
                "root": lib.root,
                "last_scan_at": lib.last_scan_at.isoformat() if lib.last_scan_at else None,
            }
            for lib in repo.list_libraries(session)
        ]
        last = repo.last_indexed_at(session)
    present = by_status["indexed"] + by_status["pending"] + by_status["failed"]
    return {
        "home": str(settings.storage.home),
        "database": _redact(settings.storage.resolved_database_url),
        "model": settings.model.model,
        "configured": describe_configured(settings.model),
        "runtime": settings.model.runtime,
        "precision": settings.model.precision,
        "images": present,
        "indexed": by_status["indexed"],
        "failed": by_status["failed"],
        "by_status": by_status,
        "spaces": spaces,
        "libraries": libraries,
        "failures": failures,
        "last_indexed_at": last.isoformat() if last else None,
    }


def _memory(described: dict[str, Any]) -> dict[str, Any]:
    """Memory per vector of one store: resident (held by the process: ids, vectors written
    since the last snapshot, the approximate index) apart from mapped (the snapshot's
    file pages, read on demand and shared). None where the backend does not say (Qdrant
    keeps its vectors in its own server)."""
    return {
        "resident_bytes_per_vector": described.get("memory_bytes_per_vector"),
        "mapped_bytes_per_vector": described.get("mapped_bytes_per_vector"),
        "resident_bytes": described.get("resident_bytes"),
        "mapped_bytes": described.get("mapped_bytes"),
        "raw_storage": described.get("raw_storage"),
        "index_storage": described.get("index_storage"),
    }


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
