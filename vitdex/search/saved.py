"""Saved searches as the API and the CLI use them: save, list, show, delete and run, each
in its own transaction, over the repository of :mod:`vitdex.db.saved_searches`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from vitdex.db import repo, saved_searches
from vitdex.db.saved_searches import SavedQuery
from vitdex.errors import NotFoundError
from vitdex.filters import SearchFilter
from vitdex.search.examples import DEFAULT_NEGATIVE_WEIGHT, check_negative_weight
from vitdex.search.results import QueryResult
from vitdex.search.service import SearchService, finite

__all__ = ["SavedQuery", "SavedSearches"]


class SavedSearches:
    """Saved searches of one catalog, run by ``service``."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.sessions = service.sessions

    def save(
        self,
        name: str,
        *,
        image_ids: Sequence[int],
        negative_ids: Sequence[int] = (),
        negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
        min_score: float | None = None,
        k: int | None = 10,
        space: str | None = None,
        filter: SearchFilter | None = None,
        replace: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Save a query of catalog examples by name (see :class:`SavedQuery`); returns
        the saved search as a dict and whether it is new. Unknown example ids are refused
        now rather than on every run; a taken name is a
        :class:`~vitdex.errors.ConflictError` unless ``replace``."""
        query = SavedQuery(
            image_ids=tuple(dict.fromkeys(image_ids)),
            negative_ids=tuple(dict.fromkeys(negative_ids)),
            negative_weight=check_negative_weight(negative_weight),
            min_score=finite(min_score),
            k=k,
            space=space,
            filter=filter or SearchFilter(),
        )
        with self.sessions.begin() as session:
            _check_examples(session, query, None)
            row, created = saved_searches.save_search(session, name, query, replace=replace)
            return saved_searches.saved_to_dict(row), created

    def list(self) -> list[dict[str, Any]]:
        """Every saved search (as dicts), by name."""
        with self.sessions() as session:
            return [saved_searches.saved_to_dict(r) for r in saved_searches.list_saved(session)]

    def get(self, name_or_id: str | int) -> dict[str, Any]:
        """One saved search by id or name, as a dict."""
        with self.sessions() as session:
            return saved_searches.saved_to_dict(saved_searches.find_saved(session, name_or_id))

    def delete(self, name_or_id: str | int) -> dict[str, Any]:
        """Forget a saved search (the photos are not touched); returns it as it was."""
        with self.sessions.begin() as session:
            return saved_searches.saved_to_dict(saved_searches.delete_saved(session, name_or_id))

    def run(
        self,
        name_or_id: str | int,
        *,
        offset: int = 0,
        k: int | None = None,
        all_above: bool = False,
    ) -> tuple[SavedQuery, QueryResult]:
        """Run a saved search: its examples as one query, its filter, space and cut-off.

        ``k`` replaces the saved page size; ``all_above`` asks for every hit above the
        saved cut-off when neither gives a page size (else pages of 10). An example photo
        that has left the catalog since is a :class:`NotFoundError` naming its id.
        """
        with self.sessions() as session:
            row = saved_searches.find_saved(session, name_or_id)
            query = SavedQuery.from_json(row.query)
            _check_examples(session, query, row.name)
        size = k if k is not None else (query.k if query.k is not None or all_above else 10)
        (result,) = self.service.similar(
            ids=query.image_ids,
            negative_ids=query.negative_ids,
            negative_weight=query.negative_weight,
            combine=True,
            k=size,
            offset=offset,
            space=query.space,
            filter=query.filter,
            min_score=query.min_score,
        )
        return query, result


def _check_examples(session: Session, query: SavedQuery, saved_as: str | None) -> None:
    """:class:`NotFoundError` naming the first example id the catalog does not hold (in
    the saved search ``saved_as``, when it is one)."""
    examples = [*query.image_ids, *query.negative_ids]
    have = repo.get_images(session, examples)
    gone = next((i for i in examples if i not in have), None)
    if gone is None:
        return
    if saved_as is None:
        raise NotFoundError(f"no image with id {gone}")
    raise NotFoundError(
        f"saved search {saved_as!r} uses image {gone} as an example, and the catalog no "
        "longer holds it: save the search again without it"
    )
