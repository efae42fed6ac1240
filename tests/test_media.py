"""Media files: H.264/yuv420p mp4 with the spec in its metadata, preview gif, contact sheet, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wanflow import media


def moving_square(frames=17, size=64):
    video = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        video[i, 20:36, 2 + 2 * i: 18 + 2 * i] = (220, 40, 40)
    return video


def test_mp4_round_trip_keeps_frames_fps_and_metadata(tmp_path):
    video = moving_square()
    spec_json = json.dumps({"prompt": 'a "quoted"\nprompt; with = and # and é'}, ensure_ascii=False)
    path = media.write_video(video, tmp_path / "v.mp4", fps=16, metadata={"comment": spec_json})
    probe = media.probe_video(path)
    assert probe["codec"] == "h264" and probe["pix_fmt"].startswith("yuv420p")
    assert probe["fps"] == 16 and probe["size"] == (64, 64) and probe["frames"].shape == video.shape
    assert json.loads(probe["tags"]["comment"]) == json.loads(spec_json)
    # flat colours survive H.264 closely
    assert np.abs(probe["frames"][5, 28, 20].astype(int) - (220, 40, 40)).max() < 20


def test_float_frames_and_batch_axis_are_accepted(tmp_path):
    floats = moving_square(9)[None].astype(np.float32) / 255.0
    assert media.to_uint8(floats).shape == (9, 64, 64, 3)
    with pytest.raises(ValueError, match=r"frames: expected shape \(F, H, W, 3\)"):
        media.to_uint8(np.zeros((9, 64, 64)))
    with pytest.raises(ValueError, match="even width and height"):
        media.write_video(np.zeros((3, 63, 64, 3), np.uint8), tmp_path / "odd.mp4", fps=8)
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "video.mp4"
    with pytest.raises(RuntimeError):
        with media.atomic_path(target) as temp:
            temp.write_bytes(b"half a video")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_preview_gif_and_contact_sheet(tmp_path):
    video = moving_square(17)
    gif = Image.open(media.write_preview_gif(video, tmp_path / "p.gif", fps=8))
    assert gif.n_frames == 17 and max(gif.size) == 128  # 64 px clips are doubled, crisp
    assert gif.info["duration"] in (120, 130)  # 125 ms, stored in GIF centiseconds
    long = np.repeat(video, 6, axis=0)  # 102 frames -> at most 48 in the gif
    assert Image.open(media.write_preview_gif(long, tmp_path / "l.gif", fps=24)).n_frames <= media.PREVIEW_MAX_FRAMES
    assert media.keyframe_indices(17) == [0, 2, 5, 7, 9, 11, 14, 16]
    assert media.keyframe_indices(3) == [0, 1, 2]
    sheet = Image.open(media.write_contact_sheet(video, tmp_path / "s.png"))
    assert sheet.size == (4 * 132 + 4, 2 * 132 + 4)
    pixels = np.asarray(sheet)
    assert (np.abs(pixels.astype(int) - (220, 40, 40)).sum(-1) < 30).sum() > 100  # the red square is on it


def test_write_outputs_makes_all_four_files(tmp_path):
    files = media.write_outputs(moving_square(9), tmp_path / "r", json.dumps({"seed": 1}), fps=8)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "contact_sheet.png", "preview.gif", "spec.json", "video.mp4"]
    assert json.loads(files.spec.read_text()) == {"seed": 1}
