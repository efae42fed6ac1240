"""Quality metrics computed from frames alone.

Two kinds:

- **prompt adherence** for the micro models: :func:`detect` reads the background colour, the object colour and the
  motion from the frames of a micro clip (:mod:`wanflow.micro.data`), and :func:`adherence` compares them with what
  the prompt names;
- **temporal flicker** for any video: :func:`flicker`.

:func:`frame_metrics` bundles them under names ready for MLflow logging.

Frames are numpy arrays of shape (F, H, W, 3), RGB, either uint8 in 0..255 or float in [0, 1]. Every threshold
below was chosen on the procedural data set with Gaussian noise, blur and a JPEG-like chroma shift added; the
measured accuracy is asserted in ``tests/test_quality.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wanflow.micro.data import parse_prompt
from wanflow.micro.vocabulary import BACKGROUND_COLOURS, COLOURS, OBJECT_COLOURS

#: RGB distance (Euclidean, 0..255 units, after a 3x3 box blur) above which a pixel is not background. The closest
#: object/background pair in the palette (green on gray) is ~107 apart; Gaussian noise of sigma 20 per channel
#: is ~12 after the blur, so 50 keeps both margins wide.
OBJECT_THRESHOLD: float = 50.0
#: Smallest object area, as a fraction of the frame, for a frame to count as showing the object (0.3 %: the
#: smallest procedural object, a triangle of radius 0.12 of the shorter side, is ~1.9 %).
MIN_AREA: float = 0.003
#: Centroid displacement over the clip, as a fraction of width (or height), above which the object moved
#: (procedural clips move 0.4; a quarter of that).
MOTION_THRESHOLD: float = 0.1
#: Area ratio last/first above which a non-moving object is "growing" (procedural clips grow 1.8x in radius,
#: ~3.2x in area).
GROWTH_THRESHOLD: float = 1.4
#: Width of the frame border, in pixels, whose median colour is the background.
BORDER: int = 2

#: ITU-R BT.601 luma weights for R, G, B.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` read from the frames of a micro clip.

    Attributes:
        background: nearest :data:`BACKGROUND_COLOURS` name to the median border colour.
        object_colour: nearest :data:`OBJECT_COLOURS` name (other than the background) to the median object
            colour; ``None`` if no frame shows an object.
        direction: one of :data:`MOTIONS`; ``None`` if no frame shows an object.
        start: object centroid ``(x, y)`` at the first frame showing it, fractions of width and height; ``None``
            if none does.
        background_rgb, object_rgb: the measured median colours, 0..255 (``object_rgb`` is ``None`` without object).
        centroids: (F, 2) per-frame centroid ``(x, y)`` in fractions, NaN where the frame shows no object.
        areas: (F,) per-frame object area as a fraction of the frame (0 where it shows none).
    """

    background: str
    object_colour: str | None
    direction: str | None
    start: tuple[float, float] | None
    background_rgb: tuple[float, float, float]
    object_rgb: tuple[float, float, float] | None
    centroids: np.ndarray = field(repr=False)
    areas: np.ndarray = field(repr=False)


def as_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8 (F, H, W, 3); float input is taken as [0, 1] and clipped, rounded.

    Raises:
        ValueError: not a 4-D array with 3 channels last, or no frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (F>=1, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        return np.rint(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)
    return np.clip(frames, 0, 255).astype(np.uint8)


def _nearest(rgb: np.ndarray, names: tuple[str, ...] | list[str]) -> str:
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=1)))]


def _box_sum3(frames: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood (edges replicated) of (F, H, W, 3) uint8 frames: int16, 9x the
    3x3 box blur (integer arithmetic: a few times faster than float)."""
    p = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge").astype(np.int16)
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]


def _erode3(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion over axes 1 and 2 of a (F, H, W) bool array (outside the frame counts as set)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = p[:, :-2] & p[:, 1:-1] & p[:, 2:]
    return rows[:, :, :-2] & rows[:, :, 1:-1] & rows[:, :, 2:]


def detect(frames: np.ndarray) -> Detection:
    """Read the background colour, object colour and motion of a micro clip from its frames.

    Method: the background is the per-channel median of the :data:`BORDER`-pixel frame border over all frames;
    object pixels are those whose 3x3-blurred colour is more than :data:`OBJECT_THRESHOLD` from it, eroded once
    (3x3) to drop isolated noise; frames with less than :data:`MIN_AREA` object pixels show no object. The object
    colour is the median of the object pixels over all frames. The direction comes from least-squares lines
    through the per-frame centroids and areas: a displacement over the clip above :data:`MOTION_THRESHOLD` gives
    left/right/up/down along the larger axis; otherwise an area ratio (fitted last/first) above
    :data:`GROWTH_THRESHOLD` gives "growing"; otherwise "still".

    Args:
        frames: (F, H, W, 3) RGB, uint8 0..255 or float [0, 1].

    Returns:
        A :class:`Detection`.

    Raises:
        ValueError: frames of the wrong shape (see :func:`as_uint8_frames`).

    Limitations: one object per clip; an object that covers most of the border is taken for the background.
    """
    frames = as_uint8_frames(frames)
    num_frames, height, width, _ = frames.shape
    b = max(1, min(BORDER, height // 4, width // 4))
    border = np.concatenate(
        [
            frames[:, :b].reshape(-1, 3),
            frames[:, -b:].reshape(-1, 3),
            frames[:, b:-b, :b].reshape(-1, 3),
            frames[:, b:-b, -b:].reshape(-1, 3),
        ]
    )
    background_rgb = np.median(border, axis=0).astype(np.float32)
    background = _nearest(background_rgb, BACKGROUND_COLOURS)

    # Squared distance of the 3x3-blurred colour to the background, all scaled by 9 (integer arithmetic).
    diff = _box_sum3(frames).astype(np.int32) - np.rint(9 * background_rgb).astype(np.int32)
    distance2 = np.einsum("fhwc,fhwc->fhw", diff, diff)
    mask = _erode3(distance2 > (9 * OBJECT_THRESHOLD) ** 2)  # (F, H, W)
    counts = mask.sum(axis=(1, 2))
    areas = counts / float(height * width)
    shown = areas >= MIN_AREA
    mask &= shown[:, None, None]

    centroids = np.full((num_frames, 2), np.nan)
    if not shown.any():
        return Detection(background, None, None, None, tuple(background_rgb.tolist()), None, centroids, areas * 0.0)

    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids[:, 0] = (mask.sum(axis=1) * xs).sum(axis=1) / counts
        centroids[:, 1] = (mask.sum(axis=2) * ys).sum(axis=1) / counts
    centroids[~shown] = np.nan
    areas = np.where(shown, areas, 0.0)

    object_rgb = np.median(frames[mask], axis=0).astype(np.float32)
    object_colour = _nearest(object_rgb, [n for n in OBJECT_COLOURS if n != background])
    direction = _direction(centroids[shown], areas[shown], np.flatnonzero(shown))
    first = int(np.flatnonzero(shown)[0])
    start = (float(centroids[first, 0]), float(centroids[first, 1]))
    return Detection(
        background,
        object_colour,
        direction,
        start,
        tuple(background_rgb.tolist()),
        tuple(object_rgb.tolist()),
        centroids,
        areas,
    )


def _direction(centroids: np.ndarray, areas: np.ndarray, frame_index: np.ndarray) -> str:
    """Motion name from the centroids (n, 2) and areas (n,) of the n frames that show the object."""
    if len(frame_index) < 2:
        return "still"
    t = frame_index.astype(np.float64)
    span = t[-1] - t[0]
    slope_x = np.polyfit(t, centroids[:, 0], 1)[0]
    slope_y = np.polyfit(t, centroids[:, 1], 1)[0]
    move_x, move_y = slope_x * span, slope_y * span
    if max(abs(move_x), abs(move_y)) > MOTION_THRESHOLD:
        if abs(move_x) >= abs(move_y):
            return "right" if move_x > 0 else "left"
        return "down" if move_y > 0 else "up"
    slope_a, intercept_a = np.polyfit(t, areas, 1)
    first_area = slope_a * t[0] + intercept_a
    last_area = slope_a * t[-1] + intercept_a
    if first_area > 0 and last_area / first_area > GROWTH_THRESHOLD:
        return "growing"
    return "still"


def adherence_detail(frames: np.ndarray, prompt: str) -> dict[str, bool]:
    """Whether the frames agree with each attribute the prompt names.

    Args:
        frames: (F, H, W, 3) RGB, uint8 or float [0, 1].
        prompt: a micro caption or any prompt; read with :func:`wanflow.micro.data.parse_prompt`.

    Returns:
        A dict with a subset of the keys ``"background"``, ``"colour"``, ``"motion"``: only those the prompt names
        (empty for a prompt that names none). The shape is not checked.

    Raises:
        ValueError: frames of the wrong shape.
    """
    attributes = parse_prompt(prompt)
    if attributes is None or (
        attributes.background is None and attributes.colour is None and attributes.motion is None
    ):
        return {}
    found = detect(frames)
    detail: dict[str, bool] = {}
    if attributes.background is not None:
        detail["background"] = found.background == attributes.background
    if attributes.colour is not None:
        detail["colour"] = found.object_colour == attributes.colour
    if attributes.motion is not None:
        detail["motion"] = found.direction == attributes.motion
    return detail


def adherence(frames: np.ndarray, prompt: str) -> float:
    """Fraction, 0..1, of the attributes the prompt names (background, object colour, motion) that :func:`detect`
    reads from the frames; ``nan`` if the prompt names none of them.

    Args and raises as :func:`adherence_detail`.
    """
    detail = adherence_detail(frames, prompt)
    if not detail:
        return float("nan")
    return sum(detail.values()) / len(detail)


def flicker(frames: np.ndarray) -> float:
    """Temporal flicker of any video, in luma units (0..255).

    ``flicker = mean over t, y, x of |Y[t] - (Y[t-1] + Y[t+1]) / 2|`` for 1 <= t <= F-2, with ``Y`` the BT.601
    luma (0.299 R + 0.587 G + 0.114 B, 0..255): how far each frame departs from the average of its neighbours.
    Zero for a static video and for a brightness ramp; small for smooth motion (only the moving edges count);
    255 for frames alternating black and white. 0.0 for fewer than 3 frames.

    Args:
        frames: (F, H, W, 3) RGB, uint8 or float [0, 1].

    Raises:
        ValueError: frames of the wrong shape.
    """
    frames = as_uint8_frames(frames)
    if frames.shape[0] < 3:
        return 0.0
    # frame by frame: a 720p clip's luma as one float array would be 1.3 GB
    luma = [frames[t].astype(np.float32) @ _LUMA for t in range(2)]
    total = 0.0
    for t in range(2, frames.shape[0]):
        luma.append(frames[t].astype(np.float32) @ _LUMA)
        total += float(np.abs(luma[1] - 0.5 * (luma[0] + luma[2])).sum(dtype=np.float64))
        luma.pop(0)
    return total / ((frames.shape[0] - 2) * frames.shape[1] * frames.shape[2])


def frame_metrics(frames: np.ndarray, prompt: str | None) -> dict[str, float]:
    """Frame-only metrics, named for MLflow logging.

    Always ``flicker`` (see :func:`flicker`). When the prompt names a background, object colour or motion (a
    micro caption), also ``adherence`` (0..1) and ``adherence_background`` / ``adherence_colour`` /
    ``adherence_motion`` (1.0 or 0.0) for each attribute the prompt names.

    Args:
        frames: (F, H, W, 3) RGB, uint8 or float [0, 1].
        prompt: the render's prompt, or ``None``.

    Raises:
        ValueError: frames of the wrong shape.
    """
    frames = as_uint8_frames(frames)
    metrics = {"flicker": flicker(frames)}
    detail = adherence_detail(frames, prompt) if prompt else {}
    if detail:
        metrics["adherence"] = sum(detail.values()) / len(detail)
        for key, ok in detail.items():
            metrics[f"adherence_{key}"] = 1.0 if ok else 0.0
    return metrics
