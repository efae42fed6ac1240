"""The words of the procedural micro data set: colours, shapes, motions and the caption template.

This module is the single source of the caption vocabulary. The project's own word-level tokenizer
(:mod:`wanflow.text`) is built from :data:`WORDS`, so the tiny and micro text encoders understand exactly
these words; anything else maps to ``<unk>``.
"""

from __future__ import annotations

#: RGB of every colour name, 0..255. Object and background palettes are chosen to be far apart in RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "purple": (120, 40, 150),
}

OBJECT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
BACKGROUND_COLOURS: tuple[str, ...] = ("black", "gray", "blue", "purple", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Motion names; "growing" scales the object up over the clip, "still" keeps it in place.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "growing")

#: Motion name -> the words that describe it in a caption.
MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "staying still",
    "growing": "growing",
}


def caption(colour: str, shape: str, motion: str, background: str) -> str:
    """The template caption, e.g. ``caption("red", "circle", "left", "blue")`` ->
    ``"a red circle moving left on a blue background"``."""
    return f"a {colour} {shape} {MOTION_PHRASES[motion]} on a {background} background"


def _words() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for text in (
        *COLOURS,
        *SHAPES,
        *(w for phrase in MOTION_PHRASES.values() for w in phrase.split()),
        "a", "an", "the", "on", "background", "moving", "object", "video", "of",
    ):
        seen.setdefault(text, None)
    return tuple(seen)


#: Every word the micro captions use, in a fixed order (token ids depend on it).
WORDS: tuple[str, ...] = _words()
