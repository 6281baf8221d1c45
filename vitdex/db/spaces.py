"""SQL for spaces (what makes vectors comparable) and their per-image vector rows.

A space row records the model, revision, layer, preprocessing and dimension its vectors
were made with; an ``image_vectors`` row says that an image has a vector in a space's
store. Functions leave committing to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from vitdex.db.models import ImageVector, Space, utcnow
from vitdex.db.rows import chunks
from vitdex.errors import NotFoundError, SpaceMismatchError

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "add_vector_rows",
    "check_agreement",
    "check_space_matches",
    "delete_space",
    "drop_space_vectors",
    "ensure_space",
    "get_space",
    "has_vector",
    "list_spaces",
    "remove_vector_rows",
    "vector_counts",
    "vector_image_ids",
]


#: The least agreement with torch fp32 a space asks of a runtime when its row records
#: none (spaces made before runtimes existed were all filled by torch).
DEFAULT_MIN_AGREEMENT = 0.999

# --------------------------------------------------------------------------- spaces


def ensure_space(session: Session, spec: Mapping[str, Any]) -> Space:
    """The space named ``spec['name']``, created if new; refused if built differently.

    A change of model, revision, preprocessing or dimension makes old and new vectors
    incomparable, so it is an error, never a silent mix.
    """
    space = session.scalar(select(Space).where(Space.name == spec["name"]))
    if space is None:
        space = Space(
            name=spec["name"],
            model_id=spec["model_id"],
            model_revision=spec["model_revision"],
            layer=spec["layer"],
            preprocessing=dict(spec["preprocessing"]),
            dim=spec["dim"],
            metric=spec["metric"],
            # Who fills a new space sets its bar: an int8 runtime's own bound, else the
            # float bound. Later writers must reach it (check_agreement).
            min_agreement=spec.get("min_agreement"),
            runtime=spec.get("runtime"),
        )
        session.add(space)
        session.flush()
        return space
    check_space_matches(space, spec)
    return space


def check_space_matches(space: Space, spec: Mapping[str, Any]) -> None:
    """Raise :class:`SpaceMismatchError` when ``spec`` describes another model or setup."""
    differences = [
        f"{field}: stored {getattr(space, field)!r}, now {spec[field]!r}"
        for field in ("model_id", "model_revision", "layer", "dim", "metric")
        if getattr(space, field) != spec[field]
    ]
    if dict(space.preprocessing) != dict(spec["preprocessing"]):
        differences.append("preprocessing differs")
    if differences:
        raise SpaceMismatchError(
            f"space {space.name!r} was built by model {space.model_id!r} "
            f"(revision {space.model_revision}) and cannot take vectors or queries from the "
            f"current model ({'; '.join(differences)}). Set VITDEX_MODEL back to "
            f"{space.model_id!r}, or re-embed everything with `vitdex index --reembed PATH`."
        )


def check_agreement(space: Space, runtime: str, agreement: float) -> None:
    """Refuse vectors from ``runtime`` when its ``agreement`` (least cosine to torch fp32 on
    the probe photos) is below what ``space`` asks, so a space never mixes vectors of
    incompatible precision. Raises :class:`SpaceMismatchError` saying what to do."""
    needed = space.min_agreement if space.min_agreement is not None else DEFAULT_MIN_AGREEMENT
    if agreement >= needed:
        return
    filled = f" (filled by {space.runtime})" if space.runtime else ""
    raise SpaceMismatchError(
        f"space {space.name!r}{filled} takes vectors within cosine {needed} of torch fp32, "
        f"but runtime {runtime} reaches {agreement:.6f} on the probe photos. Use a higher "
        "precision (VITDEX_PRECISION=fp32 or bf16) or another VITDEX_RUNTIME, or re-embed "
        "the space with this runtime (`vitdex index --reembed PATH` replaces its vectors)."
    )


def get_space(session: Session, name: str) -> Space:
    """A space by name, or :class:`NotFoundError` listing the known ones."""
    space = session.scalar(select(Space).where(Space.name == name))
    if space is None:
        names = ", ".join(session.scalars(select(Space.name).order_by(Space.id))) or "none yet"
        raise NotFoundError(f"no space named {name!r} (known spaces: {names})")
    return space


def list_spaces(session: Session) -> list[Space]:
    """All spaces, oldest first."""
    return list(session.scalars(select(Space).order_by(Space.id)))


def drop_space_vectors(session: Session, space_id: int) -> None:
    """Forget every vector row of a space (before re-embedding it)."""
    session.execute(delete(ImageVector).where(ImageVector.space_id == space_id))


def delete_space(session: Session, space_id: int) -> None:
    """Remove a space and its vector rows."""
    drop_space_vectors(session, space_id)
    session.execute(delete(Space).where(Space.id == space_id))


# --------------------------------------------------------------------------- vectors


def add_vector_rows(session: Session, image_ids: Sequence[int], space_ids: Sequence[int]) -> None:
    """Record that each image now has a vector in each space (idempotent)."""
    if not image_ids or not space_ids:
        return
    for chunk in chunks(list(image_ids)):
        session.execute(
            delete(ImageVector).where(
                ImageVector.image_id.in_(chunk), ImageVector.space_id.in_(space_ids)
            )
        )
    now = utcnow()
    session.execute(
        insert(ImageVector),
        [{"image_id": i, "space_id": s, "created_at": now} for i in image_ids for s in space_ids],
    )


def remove_vector_rows(session: Session, image_ids: Sequence[int], space_id: int) -> None:
    """Forget vector rows of some images in one space."""
    for chunk in chunks(list(image_ids)):
        session.execute(
            delete(ImageVector).where(
                ImageVector.space_id == space_id, ImageVector.image_id.in_(chunk)
            )
        )


def has_vector(session: Session, image_id: int, space_id: int) -> bool:
    """Whether the image has a vector in the space."""
    return session.get(ImageVector, {"image_id": image_id, "space_id": space_id}) is not None


def vector_image_ids(session: Session, space_id: int) -> list[int]:
    """Ids of the images that have a vector in the space, sorted."""
    return list(
        session.scalars(
            select(ImageVector.image_id)
            .where(ImageVector.space_id == space_id)
            .order_by(ImageVector.image_id)
        )
    )


def vector_counts(session: Session) -> dict[int, int]:
    """Number of vector rows per space id."""
    stmt = select(ImageVector.space_id, func.count()).group_by(ImageVector.space_id)
    return {space_id: int(n) for space_id, n in session.execute(stmt)}
