"""The procedural micro data set: clips, frames, splits and prompt parsing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from wanflow.micro import data
from wanflow.micro.data import (
    HELDOUT,
    HELDOUT_PROMPTS,
    TRAIN,
    Clip,
    PromptAttributes,
    batch,
    parse_prompt,
    render_clip,
    sample_clip,
    sample_clips,
    trajectory,
)
from wanflow.micro.vocabulary import BACKGROUND_COLOURS, COLOURS, MOTIONS, OBJECT_COLOURS, SHAPES, caption

SIZES = [(64, 64, 9), (128, 128, 17), (96, 64, 9), (64, 96, 5)]


def test_sampling_is_deterministic():
    assert sample_clips(20, seed=3) == sample_clips(20, seed=3)
    assert sample_clips(20, seed=3) != sample_clips(20, seed=4)
    a, b = sample_clips(5, seed=3), sample_clips(5, seed=3)
    np.testing.assert_array_equal(batch(a, 64, 64, 9), batch(b, 64, 64, 9))
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    assert sample_clip(rng1, "heldout") == sample_clip(rng2, "heldout")


@pytest.mark.parametrize("width,height,num_frames", SIZES)
def test_frame_shape_and_dtype(width, height, num_frames):
    frames = render_clip(sample_clips(1, seed=0)[0], width, height, num_frames)
    assert frames.shape == (num_frames, height, width, 3)
    assert frames.dtype == np.uint8
    clips = sample_clips(3, seed=0)
    assert batch(clips, width, height, num_frames).shape == (3, num_frames, height, width, 3)


def test_clip_validation_and_caption():
    clip = Clip("red", "circle", "left", "blue", (0.7, 0.5), 0.15)
    assert clip.caption == "a red circle moving left on a blue background"
    assert clip.combination == ("red", "circle", "left", "blue")
    with pytest.raises(ValueError):
        Clip("purple", "circle", "left", "blue", (0.5, 0.5), 0.15)  # purple is a background colour only
    with pytest.raises(ValueError):
        Clip("blue", "circle", "left", "blue", (0.5, 0.5), 0.15)  # object == background
    with pytest.raises(ValueError):
        Clip("red", "star", "left", "blue", (0.5, 0.5), 0.15)
    with pytest.raises(ValueError):
        Clip("red", "circle", "left", "blue", (1.5, 0.5), 0.15)
    with pytest.raises(ValueError):
        sample_clips(1, seed=0, split="test")


@pytest.mark.parametrize("motion", MOTIONS)
def test_object_stays_inside_the_frame(motion):
    rng = np.random.default_rng(0)
    for _ in range(15):
        clip = _resample_for(motion, rng)
        for width, height, num_frames in SIZES:
            frames = render_clip(clip, width, height, num_frames)
            bg = np.array(COLOURS[clip.background], dtype=np.uint8)
            border = np.concatenate(
                [frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1
            )  # (F, 2W + 2H, 3)
            assert (border == bg).all(), (clip, width, height)
            # ... and the object is visible in every frame.
            assert ((frames != bg).any(axis=-1).sum(axis=(1, 2)) > 0).all()


def _resample_for(motion, rng):
    """A sampled clip whose motion is ``motion`` (sample_clip picks the start for the motion)."""
    while True:
        clip = sample_clip(rng)
        if clip.motion == motion:
            return clip


def test_heldout_combinations_never_in_train():
    heldout = set(HELDOUT)
    assert 0.08 <= len(HELDOUT) / len(data.all_combinations()) <= 0.12
    assert heldout.isdisjoint(TRAIN)
    assert set(TRAIN) | heldout == set(data.all_combinations())
    train = sample_clips(2000, seed=11, split="train")
    assert not any(c.combination in heldout for c in train)
    held = sample_clips(300, seed=11, split="heldout")
    assert all(c.combination in heldout for c in held)
    assert len({c.combination for c in held}) > len(HELDOUT) // 2


def test_heldout_covers_the_vocabulary_and_train_covers_every_pair():
    assert {c for c, _, _, _ in HELDOUT} == set(OBJECT_COLOURS)
    assert {s for _, s, _, _ in HELDOUT} == set(SHAPES)
    assert {m for _, _, m, _ in HELDOUT} == set(MOTIONS)
    assert {b for _, _, _, b in HELDOUT} == set(BACKGROUND_COLOURS)
    # Held-out combinations are new compositions of things the model saw: every pair of attributes is in train.
    for i, j in itertools.combinations(range(4), 2):
        assert {(c[i], c[j]) for c in HELDOUT} <= {(c[i], c[j]) for c in TRAIN}
    assert HELDOUT_PROMPTS == [caption(*combo) for combo in HELDOUT]


def test_parse_prompt_on_captions():
    for combo in list(HELDOUT) + list(TRAIN[::7]):
        colour, shape, motion, background = combo
        assert parse_prompt(caption(*combo)) == PromptAttributes(colour, shape, motion, background)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("A RED Circle Moving LEFT on a Blue Background", PromptAttributes("red", "circle", "left", "blue")),
        (
            "cinematic video of a yellow triangle, slowly moving up, on the plain black background, 4k",
            PromptAttributes("yellow", "triangle", "up", "black"),
        ),
        ("a white square growing on grey", PromptAttributes("white", "square", "growing", "gray")),
        ("blue background with a green circle staying still", PromptAttributes("green", "circle", "still", "blue")),
        ("a red square", PromptAttributes("red", "square", None, None)),
        ("something moving down", PromptAttributes(None, None, "down", None)),
        ("A cat walking on the beach at sunset", None),
        ("", None),
    ],
)
def test_parse_prompt_tolerates_casing_and_extra_words(text, expected):
    assert parse_prompt(text) == expected


@pytest.mark.parametrize("shape", SHAPES)
def test_pixels_have_the_named_colours(shape):
    clip = Clip("yellow", shape, "left", "purple", (0.7, 0.4), 0.15)
    frames = render_clip(clip, 128, 96, 9)
    centres, _ = trajectory(clip, 9)
    for f in range(9):
        x, y = int(centres[f, 0] * 128), int(centres[f, 1] * 96)
        assert tuple(frames[f, y, x]) == COLOURS["yellow"]
        assert tuple(frames[f, 0, 0]) == COLOURS["purple"]
        assert tuple(frames[f, -1, -1]) == COLOURS["purple"]
    # Only the two colours and their blends (the anti-aliased edge) appear; most pixels are exact.
    exact = (frames == COLOURS["yellow"]).all(-1) | (frames == COLOURS["purple"]).all(-1)
    assert exact.mean() > 0.95


def _centroids(frames, background):
    mask = (frames != np.array(COLOURS[background], dtype=np.uint8)).any(-1)
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    return np.array([[xs[m].mean(), ys[m].mean()] for m in mask]), mask.sum(axis=(1, 2))


@pytest.mark.parametrize(
    "motion,axis,sign", [("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)]
)
def test_motion_moves_the_centroid(motion, axis, sign):
    rng = np.random.default_rng(5)
    clip = _resample_for(motion, rng)
    centroids, _ = _centroids(render_clip(clip, 128, 128, 17), clip.background)
    steps = np.diff(centroids[:, axis]) * sign
    assert (steps > 0).all()
    travel = (centroids[-1, axis] - centroids[0, axis]) * sign / 128
    assert travel == pytest.approx(data.TRAVEL, abs=0.02)
    assert np.abs(np.diff(centroids[:, 1 - axis])).max() < 0.5


def test_still_and_growing():
    still = Clip("green", "circle", "still", "gray", (0.5, 0.5), 0.15)
    frames = render_clip(still, 64, 64, 9)
    assert (frames == frames[0]).all()
    growing = Clip("green", "square", "growing", "gray", (0.5, 0.5), 0.15)
    centroids, areas = _centroids(render_clip(growing, 128, 128, 17), "gray")
    assert (np.diff(areas) >= 0).all()
    assert areas[-1] / areas[0] == pytest.approx(data.GROWTH**2, rel=0.1)
    assert np.abs(centroids - centroids[0]).max() < 1.0


def test_render_is_fast():
    import time

    clips = sample_clips(10, seed=1)
    render_clip(clips[0], 128, 128, 17)
    t0 = time.perf_counter()
    for clip in clips:
        render_clip(clip, 128, 128, 17)
    assert (time.perf_counter() - t0) / len(clips) < 0.05  # ~7 ms measured on one CPU core
