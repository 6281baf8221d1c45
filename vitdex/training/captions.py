"""Captions of training images: defaults from trigger and class words, and per-draw changes.

Kohya-style caption handling: a caption is comma-separated tags, the first ``keep_tokens``
of which (the trigger word, usually) stay in place while the rest may be shuffled per
draw; a share of draws may be trained with an empty caption (caption dropout) so the
model also learns the subject unconditioned. Both are pure functions of (seed, stream,
position), like the rest of a run's data order, so a resumed run draws the same captions.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from vitdex.errors import ConfigError

__all__ = [
    "FIND_MAX",
    "default_caption",
    "default_class_prompt",
    "replacer",
    "transform_caption",
]

#: Longest find pattern or replacement accepted (a word or a phrase, not a document).
FIND_MAX = 500


def default_caption(trigger_word: str | None, class_word: str | None, prompt: str) -> str:
    """The caption an item gets when none was set by hand.

    ``"a photo of TRIGGER CLASS"`` when the dataset has a trigger word (with or without a
    class word); otherwise the dataset's prompt.
    """
    trigger = (trigger_word or "").strip()
    klass = (class_word or "").strip()
    if trigger:
        return f"a photo of {trigger} {klass}".strip()
    return prompt


def transform_caption(
    caption: str,
    *,
    seed: int,
    stream: int,
    position: int,
    dropout: float,
    shuffle: bool,
    keep_tokens: int,
) -> str:
    """The caption the ``position``-th draw of ``stream`` trains with.

    Empty with probability ``dropout``; else, with ``shuffle``, the comma-separated tags
    after the first ``keep_tokens`` in a per-draw order. Unchanged when neither applies.
    """
    if not dropout and not shuffle:
        return caption
    rng = np.random.default_rng([seed, stream, position, 3])
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",")]
    tags = [t for t in tags if t]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    if len(tail) < 2:
        return caption
    order = rng.permutation(len(tail))
    return ", ".join(head + [tail[i] for i in order])


def default_class_prompt(class_word: str | None) -> str | None:
    """``"a photo of a CLASS"``: the class images' caption when only a class word is given."""
    klass = (class_word or "").strip()
    return f"a photo of a {klass}" if klass else None


def replacer(find: str, replace: str, *, regex: bool = False) -> Callable[[str], str]:
    """A function applying one find/replace to a caption, checked once for all captions.

    Plain text replaces every occurrence; with ``regex``, ``find`` is a Python regular
    expression and ``replace`` may use ``\\1`` or ``\\g<name>``. A changed caption comes
    back with single spaces, stripped (removing a word leaves no double space). Bad input
    is a :class:`ConfigError` saying why (empty or too long, an invalid regex, a group the
    pattern lacks, a line break) before any caption is touched.
    """
    if not find:
        raise ConfigError("find must not be empty")
    if len(find) > FIND_MAX or len(replace) > FIND_MAX:
        raise ConfigError(f"find and replace have at most {FIND_MAX} characters each")
    if any(ch in find + replace for ch in "\r\n\x00"):
        raise ConfigError("captions are one line: find and replace cannot hold line breaks")
    template: str | Callable[[re.Match[str]], str]
    if regex:
        try:
            pattern = re.compile(find)
            _check_template(pattern, replace)
        except (re.error, IndexError) as exc:
            raise ConfigError(f"invalid regular expression or replacement: {exc}") from None
        template = replace
    else:
        pattern = re.compile(re.escape(find))
        template = lambda _match: replace  # noqa: E731 - taken literally, no escapes

    def apply(caption: str) -> str:
        out = pattern.sub(template, caption)
        if out == caption:
            return caption
        if any(ch in out for ch in "\r\n\x00"):
            # A regex replacement's escapes (\\n) can make one; the input checks cannot.
            raise ConfigError("the replacement would put a line break into a caption")
        return re.sub(r"[ \t]{2,}", " ", out).strip()

    return apply


def _check_template(pattern: re.Pattern[str], replace: str) -> None:
    """Raise ``re.error`` if ``replace`` is a bad template for ``pattern``'s groups."""
    # Expanding against a match of a pattern with the same groups, all empty, checks the
    # references and escapes without touching a caption (the parser itself is private).
    names: list[str | None] = [None] * pattern.groups
    for name, index in pattern.groupindex.items():
        names[index - 1] = name
    probe = re.compile("".join(f"(?P<{n}>)" if n else "()" for n in names))
    match = probe.match("")
    if match is not None:
        match.expand(replace)
