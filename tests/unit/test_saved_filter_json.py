"""A saved search's filter survives the trip through JSON, every condition included."""

from __future__ import annotations

from datetime import datetime

import pytest

from vitdex.db.saved_searches import filter_from_json, filter_to_json
from vitdex.errors import ConfigError
from vitdex.filters import SearchFilter


def test_every_condition_round_trips() -> None:
    flt = SearchFilter(
        library_ids=(1, 2),
        path_prefix="/photos/2024",
        taken_after=datetime(2024, 1, 1),
        taken_before=datetime(2024, 2, 1, 12, 30),
        camera_make="apple",
        camera_model="iPhone 13",
        label="tabby",
        tags=("Rex", "beach"),
        hide_duplicates=True,
        head_labels=("kind:receipt", "blur:sharp"),
    )
    assert filter_from_json(filter_to_json(flt)) == flt


def test_an_empty_filter_round_trips() -> None:
    assert filter_from_json(filter_to_json(SearchFilter())) == SearchFilter()


@pytest.mark.parametrize("bad", [["receipt"], [":receipt"], "kind:receipt", [3]])
def test_a_malformed_head_label_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="head"):
        filter_from_json({"head_label": bad})
