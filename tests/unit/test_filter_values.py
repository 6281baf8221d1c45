"""Close values for a filter value that matches no photo."""

from __future__ import annotations

from vitdex.filters import FilterMiss, close_values

MAKES = ["Apple", "Canon", "NIKON CORPORATION", "Sony", "samsung"]
LABELS = ["tabby, tabby cat", "tiger cat", "Egyptian cat", "golden retriever", "seashore"]


def test_typos_and_case_find_the_stored_spelling() -> None:
    assert close_values("aple", MAKES)[0] == "Apple"
    assert close_values("Cannon", MAKES)[0] == "Canon"
    assert close_values("SAMSUNG", MAKES)[0] == "samsung"


def test_part_of_a_value_finds_the_values_containing_it() -> None:
    assert close_values("nikon", MAKES)[0] == "NIKON CORPORATION"
    # Shortest first: the closest reading of a bare word.
    assert close_values("cat", LABELS)[:3] == ("tiger cat", "Egyptian cat", "tabby, tabby cat")
    assert close_values("egyptian cat", LABELS)[0] == "Egyptian cat"


def test_nothing_close_and_limits() -> None:
    assert close_values("zzzz", MAKES) == ()
    assert close_values("", MAKES) == ()
    assert len(close_values("a", [f"a{i}" for i in range(20)], n=3)) <= 3


def test_messages_say_what_missed_and_what_to_try() -> None:
    miss = FilterMiss("camera_make", "aple", ("Apple",))
    assert miss.message == "no photo has camera make 'aple'; close values: Apple"
    common = FilterMiss("label", "xyz", (), ("seashore", "tiger cat"))
    assert common.message == "no photo has label 'xyz'; the catalog has: seashore, tiger cat"
    empty = FilterMiss("camera_model", "x", ())
    assert (
        empty.message
        == "no photo has camera model 'x'; no photo in the catalog has any camera model"
    )
