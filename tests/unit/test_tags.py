"""Tag names: what makes two names one tag, and which names are refused."""

from __future__ import annotations

import pytest

from vitdex.db.tags import MAX_TAG_LENGTH, clean_tag_name
from vitdex.errors import ConfigError
from vitdex.filters import tag_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Rex", "rex"),
        ("My  Dog ", "my dog"),
        ("STRASSE", "straße"),
        ("\tcat\u00a0food", "Cat Food"),
    ],
)
def test_names_that_are_one_tag(a: str, b: str) -> None:
    assert tag_key(a) == tag_key(b)


def test_different_names_stay_apart() -> None:
    assert tag_key("cat") != tag_key("cats")
    assert tag_key("my dog") != tag_key("mydog")


def test_clean_name_keeps_the_spelling_and_collapses_spaces() -> None:
    assert clean_tag_name("  My   Dog ") == "My Dog"
    assert clean_tag_name("Émile") == "Émile"
    assert clean_tag_name("x" * MAX_TAG_LENGTH) == "x" * MAX_TAG_LENGTH
    # Spaces around a long name do not count against its length.
    assert clean_tag_name("  " + "y" * MAX_TAG_LENGTH + "  ") == "y" * MAX_TAG_LENGTH


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * (MAX_TAG_LENGTH + 1), f"at most {MAX_TAG_LENGTH} characters, got 129"),
        ("new\nline", "control characters"),
        ("nul\x00", "control characters"),
        ("bell\x07", "control characters"),
        ("zero\u200bwidth", "control characters"),
        ("a/b", "must not contain '/'"),
    ],
)
def test_bad_names_are_refused_with_a_reason(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        clean_tag_name(name)
