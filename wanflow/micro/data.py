"""The procedural video data set the micro models are trained on.

A clip is one flat-coloured object (circle, square or triangle) on a flat background, moving left, right, up or
down, growing or staying still. Every clip has a template caption (:func:`wanflow.micro.vocabulary.caption`), so a
generated video can be checked against its prompt from the frames alone (:mod:`wanflow.quality`).

Geometry is given in fractions of the frame so that one :class:`Clip` renders at any resolution:

- ``start`` is the object centre at frame 0, ``(x, y)`` as fractions of width and height, ``y`` pointing down;
- ``size`` is the object radius as a fraction of the frame's shorter side (circle radius, half the side of the
  square, circumradius of the upward-pointing equilateral triangle);
- left/right/up/down move the centre linearly by :data:`TRAVEL` of the width (or height) over the clip; growing
  scales the radius linearly up to :data:`GROWTH` times; still keeps everything fixed.

A fixed tenth of all (colour, shape, motion, background) combinations, :data:`HELDOUT`, never appears in the
training split, so a model's compositional generalisation can be measured on :data:`HELDOUT_PROMPTS`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from wanflow.micro.vocabulary import (
    BACKGROUND_COLOURS,
    COLOURS,
    MOTIONS,
    OBJECT_COLOURS,
    SHAPES,
    caption,
)

#: Distance the centre moves over a whole clip for left/right (fraction of width) and up/down (fraction of height).
TRAVEL: float = 0.4
#: Radius at the last frame of a "growing" clip divided by the radius at frame 0.
GROWTH: float = 1.8
#: Range of :attr:`Clip.size` that :func:`sample_clip` draws from (fraction of the shorter side).
SIZE_RANGE: tuple[float, float] = (0.12, 0.2)
#: Extra gap kept between the object and the frame edge by :func:`sample_clip` (fraction of the frame), so the
#: anti-aliased edge (wider than a pixel near the sharp triangle vertices) never touches the border.
EDGE_MARGIN: float = 0.05

Combination = tuple[str, str, str, str]  # (colour, shape, motion, background)

_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
    "growing": (0.0, 0.0),
}


@dataclass(frozen=True)
class Clip:
    """One procedural clip, independent of resolution and length.

    Raises:
        ValueError: a name outside the vocabulary, an object colour equal to the background, ``start`` outside
            ``[0, 1]`` or a non-positive ``size``.
    """

    colour: str
    shape: str
    motion: str
    background: str
    start: tuple[float, float]
    size: float

    def __post_init__(self) -> None:
        if self.colour not in OBJECT_COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {OBJECT_COLOURS}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {SHAPES}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion {self.motion!r} is not one of {MOTIONS}")
        if self.background not in BACKGROUND_COLOURS:
            raise ValueError(f"background {self.background!r} is not one of {BACKGROUND_COLOURS}")
        if self.colour == self.background:
            raise ValueError(f"object and background are both {self.colour!r}")
        if len(self.start) != 2 or not all(0.0 <= v <= 1.0 for v in self.start):
            raise ValueError(f"start {self.start!r} must be (x, y) fractions in [0, 1]")
        if not self.size > 0:
            raise ValueError(f"size {self.size!r} must be > 0")

    @property
    def caption(self) -> str:
        """The template caption, e.g. ``"a red circle moving left on a blue background"``."""
        return caption(self.colour, self.shape, self.motion, self.background)

    @property
    def combination(self) -> Combination:
        """``(colour, shape, motion, background)``."""
        return (self.colour, self.shape, self.motion, self.background)


def trajectory(clip: Clip, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Object centre and radius at every frame, in fractions.

    Args:
        clip: the clip.
        num_frames: number of frames F >= 1; frame f is at time ``f / (F - 1)`` of the clip (0 when F == 1).

    Returns:
        ``centres`` of shape (F, 2), ``(x, y)`` as fractions of width and height, and ``radii`` of shape (F,) as
        fractions of the shorter side.

    Raises:
        ValueError: ``num_frames < 1``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    dx, dy = _DIRECTIONS[clip.motion]
    centres = np.stack([clip.start[0] + dx * TRAVEL * t, clip.start[1] + dy * TRAVEL * t], axis=1)
    growth = 1.0 + (GROWTH - 1.0) * t if clip.motion == "growing" else np.ones_like(t)
    return centres, clip.size * growth


def render_clip(clip: Clip, width: int, height: int, num_frames: int) -> np.ndarray:
    """Render a clip to frames.

    The background and the object interior are exactly the vocabulary RGB (:data:`COLOURS`); only the one-pixel
    edge of the object is anti-aliased (coverage-weighted blend of the two colours).

    Args:
        clip: the clip.
        width, height: frame size in pixels (>= 1).
        num_frames: number of frames F (>= 1).

    Returns:
        uint8 array of shape (F, height, width, 3), RGB.

    Raises:
        ValueError: a non-positive size or frame count.
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    centres, radii = trajectory(clip, num_frames)
    short = min(width, height)
    cx = (centres[:, 0] * width).astype(np.float32)[:, None, None]
    cy = (centres[:, 1] * height).astype(np.float32)[:, None, None]
    r = (radii * short).astype(np.float32)[:, None, None]
    # Pixel centres, in pixels.
    dx = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :] - cx
    dy = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None] - cy
    signed = _signed_distance(clip.shape, dx, dy, r)  # (F, H, W), < 0 inside, in pixels
    # Coverage of each pixel by the object, quantised to 0..255 and mapped through a colour lookup table
    # (coverage 0 -> exactly the background RGB, 255 -> exactly the object RGB).
    coverage = np.rint(np.clip(0.5 - signed, 0.0, 1.0) * 255).astype(np.uint8)
    bg = np.asarray(COLOURS[clip.background], dtype=np.float32)
    fg = np.asarray(COLOURS[clip.colour], dtype=np.float32)
    lut = np.rint(bg + (np.arange(256, dtype=np.float32)[:, None] / 255) * (fg - bg)).astype(np.uint8)
    return lut[coverage]


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (exact for circle; max of edge half-planes for square and triangle)."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    # Upward-pointing equilateral triangle with circumradius r and centroid at the centre: three edges at
    # distance r/2 (the inradius) with outward normals (0, 1) and (+-sqrt(3)/2, -1/2) (y points down).
    half = r / 2
    s = np.float32(np.sqrt(3.0) / 2)
    return np.maximum(np.maximum(dy - half, s * dx - 0.5 * dy - half), -s * dx - 0.5 * dy - half)


def batch(clips: list[Clip], width: int, height: int, num_frames: int) -> np.ndarray:
    """Render several clips: uint8 array of shape (B, F, height, width, 3). Raises as :func:`render_clip`."""
    if not clips:
        return np.zeros((0, num_frames, height, width, 3), dtype=np.uint8)
    return np.stack([render_clip(c, width, height, num_frames) for c in clips])


# --- combinations and splits ---------------------------------------------------------------------------------


def all_combinations() -> list[Combination]:
    """Every valid (colour, shape, motion, background), object colour != background; 414 with the vocabulary."""
    return [
        combo
        for combo in itertools.product(OBJECT_COLOURS, SHAPES, MOTIONS, BACKGROUND_COLOURS)
        if combo[0] != combo[3]
    ]


def _heldout() -> tuple[Combination, ...]:
    # Fixed rule (no random state): a combination is held out when a weighted sum of its vocabulary indices is
    # 0 mod 10. The weights are coprime with 10, so about a tenth of the combinations is held out and every
    # colour, shape, motion and background occurs in both splits (checked in tests/test_micro_data.py).
    chosen = []
    for combo in all_combinations():
        c, s, m, b = combo
        key = (
            3 * OBJECT_COLOURS.index(c) + 7 * SHAPES.index(s) + 9 * MOTIONS.index(m) + 1 * BACKGROUND_COLOURS.index(b)
        )
        if key % 10 == 0:
            chosen.append(combo)
    return tuple(chosen)


#: Held-out combinations: never in ``split="train"``; the only ones in ``split="heldout"``.
HELDOUT: tuple[Combination, ...] = _heldout()
_HELDOUT_SET = frozenset(HELDOUT)
#: Training combinations: every valid combination not in :data:`HELDOUT`.
TRAIN: tuple[Combination, ...] = tuple(c for c in all_combinations() if c not in _HELDOUT_SET)
#: Captions of the held-out combinations, in :data:`HELDOUT` order, for evaluation.
HELDOUT_PROMPTS: list[str] = [caption(*combo) for combo in HELDOUT]

_SPLITS = {"train": TRAIN, "heldout": HELDOUT}


def sample_clip(rng: np.random.Generator, split: str = "train") -> Clip:
    """Draw one clip: a uniform combination of the split, a size in :data:`SIZE_RANGE`, and a start position
    drawn uniformly among those that keep the whole object (plus :data:`EDGE_MARGIN`) inside the frame for the
    whole clip at any aspect ratio.

    Args:
        rng: a numpy Generator; the result depends only on its state.
        split: ``"train"`` or ``"heldout"``.

    Raises:
        ValueError: an unknown split.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    combos = _SPLITS[split]
    colour, shape, motion, background = combos[int(rng.integers(len(combos)))]
    size = float(rng.uniform(*SIZE_RANGE))
    # The object's extent in fractions of width (or height) is at most `size`, since size is relative to the
    # shorter side; a growing object reaches GROWTH * size at the last frame.
    extent = size * (GROWTH if motion == "growing" else 1.0) + EDGE_MARGIN
    dx, dy = _DIRECTIONS[motion]
    start = tuple(
        float(rng.uniform(extent + max(0.0, -d) * TRAVEL, 1.0 - extent - max(0.0, d) * TRAVEL)) for d in (dx, dy)
    )
    return Clip(colour, shape, motion, background, start, size)  # type: ignore[arg-type]


def sample_clips(n: int, seed: int, split: str = "train") -> list[Clip]:
    """``n`` clips drawn with :func:`sample_clip` from ``numpy.random.default_rng(seed)``; same seed, same clips.

    Raises:
        ValueError: ``n < 0`` or an unknown split.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    return [sample_clip(rng, split) for _ in range(n)]


# --- reading prompts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptAttributes:
    """The attributes a prompt names; ``None`` where it names none."""

    colour: str | None = None
    shape: str | None = None
    motion: str | None = None
    background: str | None = None


_COLOUR_WORDS = {**{name: name for name in COLOURS}, "grey": "gray"}
_SHAPE_WORDS = {**{name: name for name in SHAPES}, **{name + "s": name for name in SHAPES}}
_MOTION_WORDS = {
    "left": "left",
    "leftward": "left",
    "leftwards": "left",
    "right": "right",
    "rightward": "right",
    "rightwards": "right",
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
    "still": "still",
    "static": "still",
    "stationary": "still",
    "growing": "growing",
    "grows": "growing",
    "grow": "growing",
    "expanding": "growing",
}
#: Words after which a colour names the background even without the word "background" ("... on blue").
_BACKGROUND_LEADS = {"on", "over", "against"}
_FILLERS = {"a", "an", "the", "plain", "flat", "solid", "dark", "light"}


def parse_prompt(text: str) -> PromptAttributes | None:
    """Read colour, shape, motion and background from a caption-like prompt.

    Case-insensitive and tolerant of extra words: ``"A RED circle, slowly moving left, on a blue background"``
    reads like the caption. The background colour is the colour word just before ``background`` or just after
    ``on``/``over``/``against`` (fillers like "a", "the", "plain" skipped); the object colour is the first other
    colour word (only object colours count). Shape and motion are the first shape and motion words. ``grey`` reads
    as ``gray``.

    Args:
        text: the prompt.

    Returns:
        The attributes, or ``None`` when none is recognised (e.g. a prompt for a real model). A real prompt that
        happens to contain a colour or direction word is read too: the caller decides whether it is a micro prompt.
    """
    words = re.findall(r"[a-z]+", text.lower())
    background_at: int | None = None
    for i, word in enumerate(words):
        if word == "background":
            j = i - 1
            while j >= 0 and words[j] in _FILLERS:
                j -= 1
            if j >= 0 and _COLOUR_WORDS.get(words[j]) in BACKGROUND_COLOURS:
                background_at = j
                break
    if background_at is None:
        for i, word in enumerate(words):
            if word in _BACKGROUND_LEADS:
                j = i + 1
                while j < len(words) and words[j] in _FILLERS:
                    j += 1
                if j < len(words) and _COLOUR_WORDS.get(words[j]) in BACKGROUND_COLOURS:
                    background_at = j
                    break
    background = _COLOUR_WORDS[words[background_at]] if background_at is not None else None
    colour = next(
        (
            _COLOUR_WORDS[w]
            for i, w in enumerate(words)
            if i != background_at and _COLOUR_WORDS.get(w) in OBJECT_COLOURS
        ),
        None,
    )
    shape = next((_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS), None)
    motion = next((_MOTION_WORDS[w] for w in words if w in _MOTION_WORDS), None)
    if colour is None and shape is None and motion is None and background is None:
        return None
    return PromptAttributes(colour=colour, shape=shape, motion=motion, background=background)
