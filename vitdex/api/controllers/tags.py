"""Tags on photos: list them with counts, tag and untag photos by id or by filter, rename
(merging into a tag that has the new name), delete.

A tag is named in the path by its name in any case (``/api/v1/tags/Rex`` and
``/api/v1/tags/rex`` are one tag); URL-encode what a path cannot hold (``%2F`` for ``/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.errors import NotFound
from vitdex.api.schemas.filters import filter_params
from vitdex.api.schemas.search import FilterNote
from vitdex.api.schemas.tags import (
    TagAdded,
    TagOut,
    TagPhotosIn,
    TagRemoved,
    TagRenamed,
    TagRenameIn,
    TagsOut,
)
from vitdex.api.validation import json_content_type
from vitdex.db.tags import MAX_TAG_LENGTH, TagStore
from vitdex.errors import ConfigError
from vitdex.filters import SearchFilter
from vitdex.search import catalog
from vitdex.search.cluster import filter_from_params

#: Most ids one request may tag (the most ``/api/v1/image-ids`` lists at once).
MAX_IDS = 100_000

TagName = Annotated[
    str,
    PathParameter(
        min_length=1, max_length=4 * MAX_TAG_LENGTH, description="The tag's name, any case"
    ),
]


def _selection(data: TagPhotosIn) -> tuple[list[int] | None, SearchFilter | None]:
    """The ids or the filter a body names (exactly one), checked."""
    if (data.image_ids is None) == (data.filter is None):
        raise ConfigError("give exactly one of image_ids and filter")
    if data.image_ids is not None:
        if not data.image_ids:
            raise ConfigError("image_ids must not be empty")
        if len(data.image_ids) > MAX_IDS:
            raise ConfigError(f"at most {MAX_IDS} image_ids per request (use filter for more)")
        return data.image_ids, None
    flt = filter_from_params(filter_params(data.filter))
    if flt is None:
        # An empty filter would reach every photo of the catalog (a misspelt field is
        # already refused when the body is read).
        raise ConfigError(
            "filter sets no condition (known fields: library_id, folder, taken_after, "
            "taken_before, camera_make, camera_model, label, tag, hide_duplicates, "
            "head_label); to reach every photo, list their ids (GET /api/v1/image-ids)"
        )
    return None, flt


def _notes(
    sessions: sessionmaker[Session], flt: SearchFilter | None, changed: int
) -> list[FilterNote]:
    """Why a filter matched nothing, when a value of it matches no photo."""
    if flt is None or changed:
        return []
    return [FilterNote.of(m) for m in catalog.filter_misses(sessions, flt)]


def _remove(sessions: sessionmaker[Session], name: str, data: TagPhotosIn) -> TagRemoved:
    ids, flt = _selection(data)
    tag, removed = TagStore(sessions).remove(name, ids, flt)
    return TagRemoved(
        tag=TagOut.of(tag), removed=removed, filter_notes=_notes(sessions, flt, removed)
    )


class TagsController(Controller):
    """``/api/v1/tags``: Tags on photos."""

    path = "/tags"
    tags: Sequence[str] = ["tags"]
    guards: Sequence[Guard] = [json_content_type]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listTags",
        summary="List tags",
        description="Every tag with the number of photos carrying it, by name ignoring case.",
    )
    def list_tags(self, sessions: NamedDependency[sessionmaker[Session]]) -> TagsOut:
        """Every tag with the number of photos carrying it."""
        return TagsOut(tags=[TagOut.of(t) for t in TagStore(sessions).all()])

    @get(
        "/{name:str}",
        sync_to_thread=True,
        operation_id="getTag",
        summary="Get a tag",
        description="One tag (named in any case) with the number of photos carrying it.",
    )
    def get_tag(self, sessions: NamedDependency[sessionmaker[Session]], name: TagName) -> TagOut:
        """One tag with its photo count; 404 when no tag has the name."""
        return TagOut.of(TagStore(sessions).get(name))

    @post(
        "/{name:str}/images",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="tagImages",
        summary="Tag photos",
        description=(
            "Put the tag on the photos ``image_ids`` names, or on every photo matching "
            "``filter`` (exactly one). The tag is created, spelt as given, when no tag has "
            "the name in any case. Idempotent: ``added`` counts only photos that did not "
            "carry it. 404 names image ids the catalog lacks (nothing is tagged then)."
        ),
    )
    def add_images(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        name: TagName,
        data: JSONBody[TagPhotosIn],
    ) -> TagAdded:
        """Tag photos by id or by filter; how many gained the tag."""
        ids, flt = _selection(data)
        tag, added = TagStore(sessions).add(name, ids, flt)
        return TagAdded(tag=TagOut.of(tag), added=added, filter_notes=_notes(sessions, flt, added))

    @delete(
        "/{name:str}/images",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="untagImages",
        summary="Untag photos",
        description=(
            "Take the tag off the photos ``image_ids`` names, or off every photo matching "
            "``filter`` (exactly one); ``removed`` counts the photos that carried it. The tag "
            "stays, even with no photo left. 404 for an unknown tag or image ids. "
            "``POST /api/v1/tags/{name}/images/remove`` does the same, for clients that "
            "cannot send a body with DELETE."
        ),
    )
    def remove_images(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        name: TagName,
        data: JSONBody[TagPhotosIn],
    ) -> TagRemoved:
        """Untag photos by id or by filter; how many lost the tag."""
        return _remove(sessions, name, data)

    @post(
        "/{name:str}/images/remove",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="untagImagesByPost",
        summary="Untag photos (POST)",
        description=(
            "The same as ``DELETE /api/v1/tags/{name}/images``, for clients that cannot send "
            "a body with DELETE."
        ),
    )
    def remove_images_by_post(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        name: TagName,
        data: JSONBody[TagPhotosIn],
    ) -> TagRemoved:
        """Untag photos by id or by filter; how many lost the tag."""
        return _remove(sessions, name, data)

    @patch(
        "/{name:str}",
        sync_to_thread=True,
        operation_id="renameTag",
        summary="Rename a tag",
        description=(
            "Give a tag a new name (or another spelling of its own). When another tag already "
            "has the new name in any case, the photos move onto that tag and this one is "
            "deleted: ``merged`` says so."
        ),
    )
    def rename(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        name: TagName,
        data: JSONBody[TagRenameIn],
    ) -> TagRenamed:
        """Rename a tag, merging into one that has the new name."""
        tag, merged = TagStore(sessions).rename(name, data.name)
        return TagRenamed(tag=TagOut.of(tag), merged=merged)

    @delete(
        "/{name:str}",
        status_code=HTTP_204_NO_CONTENT,
        sync_to_thread=True,
        raises=[NotFound],
        operation_id="deleteTag",
        summary="Delete a tag",
        description="Delete a tag and take it off every photo (the photos stay).",
    )
    def delete_tag(self, sessions: NamedDependency[sessionmaker[Session]], name: TagName) -> None:
        """Delete a tag and take it off every photo."""
        TagStore(sessions).delete(name)
