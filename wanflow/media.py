"""Files of a render: ``video.mp4`` (H.264, yuv420p), ``preview.gif``, ``contact_sheet.png`` and ``spec.json``.

Every file is written under a temporary name in its final folder and renamed into place when complete
(``os.replace`` is atomic on one file system), so an interrupted render never leaves a truncated file under a
name that looks finished. H.264 in yuv420p is what browsers (and so the MLflow UI) play; OpenCV's ``mp4v``
shows a blank player (``shared/RESEARCH.md`` §3).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw

#: Longest side of the preview gif and of one contact-sheet tile, in pixels (small enough to inline in a notebook).
PREVIEW_SIZE = 256
#: At most this many frames go into the preview gif (evenly spaced), keeping it to a few hundred kB.
PREVIEW_MAX_FRAMES = 48
#: Keyframes on the contact sheet, and its columns.
SHEET_FRAMES = 8
SHEET_COLUMNS = 4


@dataclass(frozen=True)
class MediaFiles:
    """Paths of a render's files, all in one folder."""

    video: Path
    preview: Path
    contact_sheet: Path
    spec: Path

    def as_dict(self) -> dict[str, Path]:
        return {"video": self.video, "preview": self.preview, "contact_sheet": self.contact_sheet, "spec": self.spec}


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix); rename it to ``target`` if the block succeeds,
    delete it if the block raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.partial{target.suffix}")
    try:
        yield temp
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def check_writable(folder: Path, field: str = "out_dir") -> None:
    """Create ``folder`` if needed and prove a file can be written there.

    Raises:
        PermissionError: naming ``field`` and the folder, when it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{field}: cannot write to {folder} ({err.strerror}); choose another --out folder") from None


def atomic_write_text(target: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically. Returns ``target``."""
    with atomic_path(target) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(target)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8 (F, H, W, 3). Accepts uint8, or floats in [0, 1] (diffusers' ``output_type="np"``,
    with or without a leading batch axis of 1).

    Raises:
        ValueError: not a (F, H, W, 3) video.
    """
    frames = np.asarray(frames)
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return frames


def write_video(frames: np.ndarray, path: Path, fps: int, metadata: dict[str, str] | None = None) -> Path:
    """Encode ``frames`` (uint8 (F, H, W, 3), or floats in [0, 1]) as H.264/yuv420p mp4 at ``fps`` frames per
    second with imageio-ffmpeg. ``metadata`` becomes mp4 tags (e.g. ``comment`` holds the spec JSON).

    Width and height must be even (yuv420p halves chroma); frames are never rescaled.

    Raises:
        ValueError: odd width or height.
    """
    frames = to_uint8(frames)
    num, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise ValueError(f"frames: H.264/yuv420p needs even width and height, got {width}x{height}")
    params = ["-crf", "17", "-preset", "medium", "-movflags", "+faststart"]
    for key, value in (metadata or {}).items():
        params += ["-metadata", f"{key}={value}"]
    with atomic_path(Path(path)) as temp:
        writer = imageio_ffmpeg.write_frames(
            str(temp), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=1, output_params=params, ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return Path(path)


def _resize_for_preview(image: Image.Image) -> Image.Image:
    longest = max(image.size)
    if longest > PREVIEW_SIZE:
        scale = PREVIEW_SIZE / longest
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    factor = max(1, (PREVIEW_SIZE // 2) // longest)  # small clips: integer upscale, crisp pixels
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def write_preview_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    """A looping gif at most :data:`PREVIEW_SIZE` px on its long side and :data:`PREVIEW_MAX_FRAMES` frames,
    playing at the video's speed (frames skipped evenly, each shown longer)."""
    frames = to_uint8(frames)
    step = max(1, -(-len(frames) // PREVIEW_MAX_FRAMES))
    images = [_resize_for_preview(Image.fromarray(f)) for f in frames[::step]]
    duration_ms = max(20, round(1000 * step / fps))
    with atomic_path(Path(path)) as temp:
        images[0].save(temp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return Path(path)


def keyframe_indices(num_frames: int, count: int = SHEET_FRAMES) -> list[int]:
    """``count`` frame indices evenly spaced from the first to the last frame (fewer for short clips)."""
    count = min(count, num_frames)
    if count == 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def write_contact_sheet(frames: np.ndarray, path: Path) -> Path:
    """A PNG grid of :func:`keyframe_indices` frames, :data:`SHEET_COLUMNS` per row, each labelled ``#index``."""
    frames = to_uint8(frames)
    indices = keyframe_indices(len(frames))
    tiles = [_resize_for_preview(Image.fromarray(frames[i])) for i in indices]
    tile_w, tile_h = tiles[0].size
    columns = min(SHEET_COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    gap = 4
    sheet = Image.new("RGB", (columns * (tile_w + gap) + gap, rows * (tile_h + gap) + gap), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for n, (index, tile) in enumerate(zip(indices, tiles)):
        x, y = gap + (n % columns) * (tile_w + gap), gap + (n // columns) * (tile_h + gap)
        sheet.paste(tile, (x, y))
        draw.rectangle((x, y, x + 28, y + 12), fill=(0, 0, 0))
        draw.text((x + 2, y + 1), f"#{index}", fill=(255, 255, 255))
    with atomic_path(Path(path)) as temp:
        sheet.save(temp, format="PNG")
    return Path(path)


def write_outputs(frames: np.ndarray, out_dir: Path, spec_json: str, fps: int) -> MediaFiles:
    """Write all four files of a render into ``out_dir``: the spec first, the video last (so a folder with a
    ``video.mp4`` is a complete render). ``spec_json`` is the spec's canonical JSON; it also goes into the mp4's
    ``comment`` tag."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = atomic_write_text(out_dir / "spec.json", json.dumps(json.loads(spec_json), indent=2, ensure_ascii=False))
    preview = write_preview_gif(frames, out_dir / "preview.gif", fps)
    sheet = write_contact_sheet(frames, out_dir / "contact_sheet.png")
    video = write_video(frames, out_dir / "video.mp4", fps, metadata={"comment": spec_json, "title": "wanflow render"})
    return MediaFiles(video=video, preview=preview, contact_sheet=sheet, spec=spec_path)


def probe_video(path: Path) -> dict:
    """Read an mp4 back: ``{"frames": uint8 (F, H, W, 3), "codec": str, "pix_fmt": str, "fps": float,
    "size": (w, h), "tags": {key: value}}``, using the ffmpeg binary that imageio-ffmpeg ships."""
    import subprocess

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True, text=True, check=True,
    )
    tags = {}
    for line in result.stdout.splitlines()[1:]:
        if "=" in line:
            key, value = line.split("=", 1)
            tags[key] = value.replace("\\=", "=").replace("\\;", ";").replace("\\#", "#").replace("\\\\", "\\")
    return {
        "frames": np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8),
        "codec": meta.get("codec", ""),
        "pix_fmt": meta.get("pix_fmt", ""),
        "fps": meta["fps"],
        "size": (width, height),
        "tags": tags,
    }
