"""Caption rules: defaults from trigger and class words, and find/replace."""

from __future__ import annotations

import pytest

from vitdex.errors import ConfigError
from vitdex.training.captions import default_caption, default_class_prompt, replacer
from vitdex.training.curate.edits import resolve_prompts


def test_default_captions_from_words() -> None:
    assert default_caption("sks", "dog", "ignored") == "a photo of sks dog"
    assert default_caption("sks", None, "ignored") == "a photo of sks"
    assert default_caption(None, "dog", "my prompt") == "my prompt"
    assert default_class_prompt(" dog ") == "a photo of a dog"
    assert default_class_prompt("") is None and default_class_prompt(None) is None


def test_resolve_prompts() -> None:
    assert resolve_prompts(None, None, "sks", "dog") == ("a photo of sks dog", "a photo of a dog")
    # Given prompts win over the words.
    given = resolve_prompts(" a sks corgi ", "a corgi", "sks", "dog")
    assert given == ("a sks corgi", "a corgi")
    assert resolve_prompts("a photo of x", None, None, None) == ("a photo of x", None)
    for prompt, trigger, words in [
        (None, None, "needs a prompt"),
        ("  ", "", "needs a prompt"),
        (None, "two\nlines", "one line"),
        (None, "x" * 65, "at most 64"),
        ("one\ntwo", "sks", "one line"),
    ]:
        with pytest.raises(ConfigError, match=words):
            resolve_prompts(prompt, None, trigger, None)


def test_plain_replace_takes_text_literally() -> None:
    apply = replacer("dog", "puppy")
    assert apply("a photo of sks dog, dog toy") == "a photo of sks puppy, puppy toy"
    assert apply("a cat") == "a cat"
    # Regex characters and backslashes mean themselves without --regex.
    assert replacer("a.b", r"\1")("a.b axb") == r"\1 axb"
    # Removing a word leaves single spaces, stripped.
    assert replacer("dog", "")("a dog on the dog") == "a on the"


def test_regex_replace_with_groups() -> None:
    apply = replacer(r"(\w+) (dog|cat)\b", r"\2 called \1", regex=True)
    assert apply("a photo of sks dog") == "a photo of dog called sks"
    named = replacer(r"(?P<w>sks)", r"<\g<w>>", regex=True)
    assert named("sks dog") == "<sks> dog"


@pytest.mark.parametrize(
    ("find", "replace", "regex", "words"),
    [
        ("", "x", False, "must not be empty"),
        ("(", "x", True, "invalid regular expression"),
        ("a", r"\2", True, "invalid group reference"),
        ("(a)", r"\g<nope>", True, "unknown group name"),
        ("a", "two\nlines", False, "one line"),
        ("a\n", "b", True, "one line"),
        ("a" * 501, "b", False, "at most 500"),
    ],
)
def test_bad_find_replace_is_refused_with_the_reason(
    find: str, replace: str, regex: bool, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        replacer(find, replace, regex=regex)


def test_a_regex_escape_cannot_break_a_caption_in_two() -> None:
    apply = replacer("dog", r"d\nog", regex=True)  # the template turns \n into a newline
    with pytest.raises(ConfigError, match="line break"):
        apply("a dog")
    assert apply("a cat") == "a cat"  # nothing matched, nothing refused
