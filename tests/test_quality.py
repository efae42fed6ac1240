"""Frame-only quality metrics, checked on the procedural data set where the truth is known.

The thresholds in :mod:`wanflow.quality` were chosen here: on clean clips and on clips degraded like a generated
video (3x3 box blur, JPEG-like chroma subsampling and colour shift, Gaussian noise of sigma 20) the detector reads
background, object colour and motion correctly in 100 % of the clips measured (also with noise sigma up to 50).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wanflow.micro.data import Clip, render_clip, sample_clips
from wanflow.micro.vocabulary import caption
from wanflow.quality import (
    adherence,
    adherence_detail,
    as_uint8_frames,
    detect,
    flicker,
    frame_metrics,
)

#: (width, height, num_frames) cycled over the sampled clips.
SIZES = [(64, 64, 9), (64, 64, 17), (128, 128, 9), (128, 128, 17), (96, 64, 9)]


def _degrade(frames: np.ndarray, rng: np.random.Generator, sigma: float = 20.0) -> np.ndarray:
    """Like a generated, compressed video: 3x3 box blur, 4:2:0 chroma with a colour shift, Gaussian noise."""
    x = frames.astype(np.float32)
    _, height, width, _ = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    x = sum(p[:, i : i + height, j : j + width] for i in range(3) for j in range(3)) / 9
    y = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    cb, cr = (x[..., 2] - y) * 0.564, (x[..., 0] - y) * 0.713

    def subsample(c):
        f, h, w = c.shape
        c = c[:, : h // 2 * 2, : w // 2 * 2].reshape(f, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return np.repeat(np.repeat(c, 2, axis=1), 2, axis=2)

    cb, cr, y = subsample(cb) * 0.9 + 4, subsample(cr) * 0.9 - 4, y * 0.95 + 8
    r, b = y + 1.403 * cr, y + 1.773 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    x = np.stack([r, g, b], axis=-1) + rng.normal(0.0, sigma, (*y.shape, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _accuracy(clips, degrade=None):
    right = {"background": 0, "colour": 0, "motion": 0}
    for i, clip in enumerate(clips):
        width, height, num_frames = SIZES[i % len(SIZES)]
        frames = render_clip(clip, width, height, num_frames)
        if degrade is not None:
            frames = degrade(frames)
        found = detect(frames)
        right["background"] += found.background == clip.background
        right["colour"] += found.object_colour == clip.colour
        right["motion"] += found.direction == clip.motion
    return {k: v / len(clips) for k, v in right.items()}


def test_detector_is_exact_on_clean_clips():
    clips = sample_clips(250, seed=100) + sample_clips(50, seed=100, split="heldout")
    accuracy = _accuracy(clips)
    assert accuracy == {"background": 1.0, "colour": 1.0, "motion": 1.0}  # measured: 300/300 each


def test_detector_is_robust_to_blur_noise_and_compression():
    rng = np.random.default_rng(0)
    clips = sample_clips(100, seed=200) + sample_clips(20, seed=200, split="heldout")
    accuracy = _accuracy(clips, degrade=lambda f: _degrade(f, rng))
    assert min(accuracy.values()) >= 0.95, accuracy  # measured: 1.0 for each on 375 clips, also at sigma 50


def test_detection_fields():
    clip = Clip("red", "circle", "right", "blue", (0.3, 0.6), 0.15)
    found = detect(render_clip(clip, 128, 128, 17))
    assert (found.background, found.object_colour, found.direction) == ("blue", "red", "right")
    assert found.start == pytest.approx((0.3, 0.6), abs=0.01)
    assert found.centroids.shape == (17, 2) and found.areas.shape == (17,)
    assert found.areas == pytest.approx(np.pi * (0.15 * 128 - 1) ** 2 / 128**2, rel=0.1)  # eroded by a pixel
    assert np.all(np.diff(found.centroids[:, 0]) > 0)


def test_float_frames_and_no_object():
    clip = Clip("green", "square", "growing", "black", (0.5, 0.5), 0.15)
    frames = render_clip(clip, 64, 64, 9)
    assert detect(frames.astype(np.float32) / 255).direction == "growing"
    empty = np.full((5, 32, 32, 3), 120, dtype=np.uint8)
    found = detect(empty)
    assert (found.background, found.object_colour, found.direction, found.start) == ("gray", None, None, None)
    with pytest.raises(ValueError):
        detect(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        as_uint8_frames(np.zeros((0, 8, 8, 3)))


def test_adherence_on_own_and_other_captions():
    clip = Clip("yellow", "triangle", "down", "purple", (0.5, 0.3), 0.15)
    frames = render_clip(clip, 64, 64, 9)
    assert adherence(frames, clip.caption) == 1.0
    assert adherence_detail(frames, clip.caption) == {"background": True, "colour": True, "motion": True}
    assert adherence(frames, caption("red", "triangle", "up", "purple")) == pytest.approx(1 / 3)
    assert adherence(frames, caption("white", "circle", "left", "black")) == 0.0
    assert adherence(frames, "a YELLOW thing, moving left") == 0.5
    assert adherence_detail(frames, "a yellow thing") == {"colour": True}
    assert math.isnan(adherence(frames, "a cat walking on the beach at sunset"))
    assert adherence_detail(frames, "a cat walking on the beach at sunset") == {}


def test_flicker():
    static = render_clip(Clip("red", "circle", "still", "blue", (0.5, 0.5), 0.15), 64, 64, 9)
    assert flicker(static) == 0.0
    moving = render_clip(Clip("white", "square", "left", "black", (0.7, 0.5), 0.15), 128, 128, 17)
    alternating = np.zeros((9, 32, 32, 3), dtype=np.uint8)
    alternating[::2] = 255
    assert 0.0 < flicker(moving) < 10.0  # measured 3.1: only the moving edges count
    assert flicker(alternating) == pytest.approx(255.0)
    ramp = np.repeat(np.linspace(0, 1, 9, dtype=np.float32), 16 * 16 * 3).reshape(9, 16, 16, 3)
    assert flicker(ramp) < 0.5  # a smooth fade is not flicker (rounding to uint8 only)
    assert flicker(static[:2]) == 0.0


def test_frame_metrics_keys():
    clip = Clip("blue", "circle", "up", "white", (0.5, 0.7), 0.15)
    frames = render_clip(clip, 64, 64, 9)
    metrics = frame_metrics(frames, clip.caption)
    assert set(metrics) == {
        "flicker",
        "adherence",
        "adherence_background",
        "adherence_colour",
        "adherence_motion",
    }
    assert metrics["adherence"] == 1.0 and all(isinstance(v, float) for v in metrics.values())
    assert set(frame_metrics(frames, "a cat on a sofa")) == {"flicker"}
    assert set(frame_metrics(frames, None)) == {"flicker"}
    assert set(frame_metrics(frames, "a red thing")) == {"flicker", "adherence", "adherence_colour"}
