"""Captions of training images: defaults from trigger and class words, and per-draw changes.

Kohya-style caption handling: a caption is comma-separated tags, the first ``keep_tokens``
of which (the trigger word, usually) stay in place while the rest may be shuffled per
draw; a share of draws may be trained with an empty caption (caption dropout) so the
model also learns the subject unconditioned. Both are pure functions of (seed, stream,
position), like the rest of a run's data order, so a resumed run draws the same captions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["default_caption", "transform_caption"]


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
