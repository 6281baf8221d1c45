"""A synthetic catalog for the API benchmarks: image rows, one space, and its vectors.

No photos and no model: the rows are inserted in bulk with SQL (as an index run would
leave them, every image ``indexed`` with its ``image_vectors`` row and top-5 labels), and
the FAISS store of the space gets realistic vectors keyed by the image ids: a few hundred
cluster centres in a 48-d subspace, mapped into ``dim`` dimensions by a random
orthonormal matrix, plus small isotropic noise, L2-normalised.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from sqlalchemy import insert

from vitdex.config import Settings
from vitdex.db.engine import ensure_schema, make_engine
from vitdex.db.models import Image, ImageLabel, ImageStatus, ImageVector, Library, Space
from vitdex.indexer.models import normalize_model_id
from vitdex.vectors.factory import store_folder
from vitdex.vectors.faiss.store import FaissStore

SPACE = "cls"
CHUNK = 20_000
LABELS_PER_IMAGE = 5

#: What a ViT-B/16 checkpoint's preprocessor records with its spaces.
PREPROCESSING: dict[str, object] = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_center_crop": False,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "draft": True,
}
_CAMERAS = (
    ("Canon", "Canon EOS R6"),
    ("NIKON CORPORATION", "NIKON Z 6_2"),
    ("SONY", "ILCE-7M3"),
    ("Apple", "iPhone 13 Pro"),
    ("FUJIFILM", "X-T4"),
    (None, None),
)
#: An ImageNet-sized label vocabulary.
_LABELS = tuple(f"label {i:03d}" for i in range(1000))


@dataclass
class Catalog:
    """What was built (image ids 1..n) and how long each part took."""

    n: int
    dim: int
    rows_seconds: float
    vectors_seconds: float


def vector_chunks(
    n: int, dim: int, seed: int, *, centres: int = 300, sub: int = 48
) -> Iterator[npt.NDArray[np.float32]]:
    """``n`` clustered, low-intrinsic-dimension unit vectors, in chunks of ``CHUNK``."""
    model = np.random.default_rng(7)
    basis, _ = np.linalg.qr(model.standard_normal((dim, sub)))
    basis_t = basis.T.astype(np.float32)  # [sub, dim], orthonormal rows
    centre = model.standard_normal((centres, sub)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        low = centre[rng.integers(0, centres, hi - lo)]
        low += 0.5 * rng.standard_normal(low.shape, dtype=np.float32)
        x = low @ basis_t
        x += 0.02 * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def _image_rows(lo: int, hi: int, library_id: int, now: datetime) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    base = datetime(2015, 1, 1)
    for i in range(lo, hi):
        make, model = _CAMERAS[i % len(_CAMERAS)]
        rows.append(
            {
                "id": i,
                "library_id": library_id,
                "path": f"/photos/{2015 + i % 10}/{i // 1000:04d}/IMG_{i:07d}.jpg",
                "sha256": hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
                "size": 3_000_000 + (i * 7919) % 2_000_000,
                "mtime_ns": 1_600_000_000_000_000_000 + i * 1_000_000_000,
                "width": 4000,
                "height": 3000,
                "format": "JPEG",
                "taken_at": base + timedelta(minutes=37 * i) if make else None,
                "camera_make": make,
                "camera_model": model,
                "orientation": 1,
                "status": ImageStatus.INDEXED.value,
                "created_at": now,
                "updated_at": now,
                "indexed_at": now,
            }
        )
    return rows


def build_catalog(settings: Settings, n: int, dim: int, *, seed: int = 1) -> Catalog:
    """Fill an empty catalog and FAISS store under ``settings`` with ``n`` images."""
    t0 = time.perf_counter()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    now = datetime.now(UTC)
    model_id = normalize_model_id(settings.model.model)
    with engine.begin() as conn:
        library_id = conn.execute(
            insert(Library).values(root="/photos", created_at=now).returning(Library.id)
        ).scalar_one()
        space_id = conn.execute(
            insert(Space)
            .values(
                name=SPACE,
                model_id=model_id,
                model_revision=settings.model.model_revision or "main",
                layer=SPACE,
                preprocessing=PREPROCESSING,
                dim=dim,
                metric="ip",
                created_at=now,
            )
            .returning(Space.id)
        ).scalar_one()
        for lo in range(1, n + 1, CHUNK):
            hi = min(n + 1, lo + CHUNK)
            conn.execute(insert(Image), _image_rows(lo, hi, library_id, now))
            conn.execute(
                insert(ImageVector),
                [{"image_id": i, "space_id": space_id, "created_at": now} for i in range(lo, hi)],
            )
            conn.execute(
                insert(ImageLabel),
                [
                    {
                        "image_id": i,
                        "rank": rank,
                        "label": _LABELS[(i * 31 + rank * 17) % len(_LABELS)],
                        "score": round(0.9 / rank, 6),
                        "model_id": model_id,
                    }
                    for i in range(lo, hi)
                    for rank in range(1, LABELS_PER_IMAGE + 1)
                ],
            )
    engine.dispose()
    t1 = time.perf_counter()
    store = FaissStore(store_folder(settings, SPACE), SPACE, dim, metric="ip", durable=False)
    try:
        lo = 1
        for chunk in vector_chunks(n, dim, seed):
            ids = np.arange(lo, lo + len(chunk), dtype=np.int64)
            store.upsert(ids, chunk)
            lo += len(chunk)
        store.flush()
    finally:
        store.close()
    return Catalog(n=n, dim=dim, rows_seconds=t1 - t0, vectors_seconds=time.perf_counter() - t1)
