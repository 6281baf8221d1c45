"""The SQL catalog: models, engine and migrations, repository functions."""

from vitdex.db import head_models, repo, review_models
from vitdex.db.engine import ensure_schema, make_engine, session_factory, upgrade
from vitdex.db.models import (
    Base,
    Image,
    ImageLabel,
    ImageStatus,
    ImageVector,
    Job,
    JobState,
    Library,
    Space,
)

__all__ = [
    "Base",
    "Image",
    "ImageLabel",
    "ImageStatus",
    "ImageVector",
    "Job",
    "JobState",
    "Library",
    "Space",
    "ensure_schema",
    "head_models",
    "make_engine",
    "repo",
    "review_models",
    "session_factory",
    "upgrade",
]
