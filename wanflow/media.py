"""Files of a render: ``video.mp4`` (H.264, yuv420p), ``preview.gif``, ``contact_sheet.png`` and ``spec.json``.

Every file is written under a temporary name in its final folder and renamed into place when complete
(``os.replace`` is atomic on one file system), so an interrupted render never leaves a truncated file under a
name that looks finished; :func:`write_outputs` renames a render's four files only once all four are written. The
mp4 counts as written only when ffmpeg exits with status 0 (a full disk makes ffmpeg fail at its last write, after
every frame was sent). H.264 in yuv420p is what browsers (and so the MLflow UI) play; OpenCV's ``mp4v`` shows a
blank player (``FACTS.md`` §3).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from wanflow.exceptions import DiskFullError, is_disk_full

#: Longest side of the preview gif and of one contact-sheet tile, in pixels (small enough to inline in a notebook).
PREVIEW_SIZE = 256
#: x264 speed preset. ``veryfast`` at CRF 17 encoded a 1280x704x121 clip in 6.9 s against 29.2 s for ``medium``
#: (2 CPU cores), and its file was no larger (13.4 vs 15.1 MB): the encode is most of the kit's overhead
#: (``bench/overhead.py``).
X264_PRESET = "veryfast"
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


#: Longest file-name component :func:`safe_name` makes (well under every file system's 255 bytes).
MAX_NAME_LENGTH = 64


def safe_name(text: str, fallback: str = "untitled", max_length: int = MAX_NAME_LENGTH) -> str:
    """``text`` as one file-name component that stays where it is put: ASCII letters, digits, ``.``, ``_`` and
    ``-`` only (every other run of characters, ``/``, NUL, control characters and emoji included, becomes one
    ``-``), no leading or trailing ``.``, ``_`` or ``-`` (so never ``..`` nor a hidden file), at most
    ``max_length`` characters; ``fallback`` when nothing is left. ``safe_name("../../etc/passwd") == "etc-passwd"``.
    Names wanflow makes from user text (presets, lock names) go through it, whatever validated them before."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")
    name = name[:max_length].rstrip("._-")
    return name or fallback


@contextlib.contextmanager
def disk_full_names(target: Path) -> Iterator[None]:
    """Turn an OSError for a full disk raised in the block into :class:`wanflow.exceptions.DiskFullError` naming
    ``target`` and its folder: ``out_dir: the disk is full: cannot write video.mp4 in /renders/a (No space left on
    device); free some space or choose another --out folder``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if not is_disk_full(err):
            raise
        reason = err.strerror or os.strerror(errno.ENOSPC)
        raise DiskFullError(f"out_dir: the disk is full: cannot write {Path(target).name} in {Path(target).parent} "
                            f"({reason}); free some space or choose another --out folder") from err


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix); rename it to ``target`` if the block succeeds,
    delete it if the block raises.

    Raises:
        wanflow.exceptions.DiskFullError: the block failed for a full disk (the message names ``target``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.partial{target.suffix}")
    try:
        with disk_full_names(target):
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
    second with the ffmpeg binary that imageio-ffmpeg ships. ``metadata`` becomes mp4 tags (e.g. ``comment`` holds
    the spec JSON).

    Width and height must be even (yuv420p halves chroma); frames are never rescaled.

    Raises:
        ValueError: odd width or height.
        wanflow.exceptions.DiskFullError: the disk filled up (nothing is left at ``path``).
        RuntimeError: ffmpeg failed otherwise (its last error lines in the message).
    """
    with atomic_path(Path(path)) as temp:
        _encode_h264(frames, temp, fps, metadata)
    return Path(path)


def _ffmpeg() -> str:
    """The ffmpeg binary imageio-ffmpeg ships (imported here, not at module import: frames-only work, such as the
    GPU benchmark, runs where imageio-ffmpeg is not installed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _encode_h264(frames: np.ndarray, path: Path, fps: int, metadata: dict[str, str] | None = None) -> None:
    """ffmpeg reads rgb24 frames on stdin and writes ``path``: the command imageio-ffmpeg's ``write_frames`` builds
    (libx264, yuv420p, no rescaling), run here so that ffmpeg's exit status and stderr are read (imageio-ffmpeg
    ignores both, so a full disk left a truncated mp4 that looked complete)."""
    frames = to_uint8(frames)
    num, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise ValueError(f"frames: H.264/yuv420p needs even width and height, got {width}x{height}")
    command = [
        _ffmpeg(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
        "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
        "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-v", "error",
        "-crf", "17", "-preset", X264_PRESET, "-movflags", "+faststart",
    ]
    for key, value in (metadata or {}).items():
        command += ["-metadata", f"{key}={value}"]
    command.append(str(path))
    # its own session: Ctrl-C reaches Python, which stops ffmpeg (as imageio-ffmpeg does)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        try:
            for frame in frames:
                process.stdin.write(frame.tobytes())
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped early: its status and stderr say why
        status = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        reader.join()
        process.stderr.close()
    if status != 0:
        text = b"".join(errors).decode("utf-8", errors="replace").strip()
        tail = " | ".join(text.splitlines()[-3:]) or "no message"
        if "No space left on device" in text or "Disk quota exceeded" in text:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}; ffmpeg said: {tail}")
        raise RuntimeError(f"video: ffmpeg could not write {path.name} (exit status {status}): {tail}")


def _resize_for_preview(image: Image.Image) -> Image.Image:
    longest = max(image.size)
    if longest > PREVIEW_SIZE:
        scale = PREVIEW_SIZE / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # reducing_gap: box-reduce first, Lanczos the last 3x (Pillow's fast path for big downscales)
        return image.resize(size, Image.LANCZOS, reducing_gap=3.0)
    factor = max(1, (PREVIEW_SIZE // 2) // longest)  # small clips: integer upscale, crisp pixels
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def write_preview_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    """A looping gif at most :data:`PREVIEW_SIZE` px on its long side and :data:`PREVIEW_MAX_FRAMES` frames,
    playing at the video's speed (frames skipped evenly, each shown longer)."""
    with atomic_path(Path(path)) as temp:
        _save_preview_gif(frames, temp, fps)
    return Path(path)


def _save_preview_gif(frames: np.ndarray, path: Path, fps: int) -> None:
    """The gif of :func:`write_preview_gif`, written straight to ``path`` (the caller makes it atomic)."""
    frames = to_uint8(frames)
    step = max(1, -(-len(frames) // PREVIEW_MAX_FRAMES))
    # Pillow's default GIF quantizer (median cut) took 3.7 s for 41 frames of 256x141; fast octree 0.06 s
    images = [_resize_for_preview(Image.fromarray(f)).quantize(256, method=Image.Quantize.FASTOCTREE)
              for f in frames[::step]]
    duration_ms = max(20, round(1000 * step / fps))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def keyframe_indices(num_frames: int, count: int = SHEET_FRAMES) -> list[int]:
    """``count`` frame indices evenly spaced from the first to the last frame (fewer for short clips)."""
    count = min(count, num_frames)
    if count == 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def write_contact_sheet(frames: np.ndarray, path: Path) -> Path:
    """A PNG grid of :func:`keyframe_indices` frames, :data:`SHEET_COLUMNS` per row, each labelled ``#index``."""
    with atomic_path(Path(path)) as temp:
        _save_contact_sheet(frames, temp)
    return Path(path)


def _save_contact_sheet(frames: np.ndarray, path: Path) -> None:
    """The PNG of :func:`write_contact_sheet`, written straight to ``path`` (the caller makes it atomic)."""
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
    sheet.save(path, format="PNG")


def write_outputs(frames: np.ndarray, out_dir: Path, spec_json: str, fps: int) -> MediaFiles:
    """Write all four files of a render into ``out_dir``, all or nothing: each goes to a temporary name, and only
    when all four are written are they renamed into place, the spec first and the video last (so a folder with a
    ``video.mp4`` is a complete render, and a failed write leaves an earlier render in the folder untouched).
    ``spec_json`` is the spec's canonical JSON; it also goes into the mp4's ``comment`` tag.

    Raises:
        wanflow.exceptions.DiskFullError: the disk filled up (the message names the file and the folder); no
            file of this render is left behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = MediaFiles(video=out_dir / "video.mp4", preview=out_dir / "preview.gif",
                       contact_sheet=out_dir / "contact_sheet.png", spec=out_dir / "spec.json")
    with contextlib.ExitStack() as stack:  # entered video first, so renamed last
        video = stack.enter_context(atomic_path(files.video))
        sheet = stack.enter_context(atomic_path(files.contact_sheet))
        preview = stack.enter_context(atomic_path(files.preview))
        spec = stack.enter_context(atomic_path(files.spec))
        # ffmpeg encodes (in its own process, fed by a thread) while this thread draws the gif and the sheet: the
        # mp4 is most of the kit's overhead on a render (bench/overhead.py), and the two overlap on any multi-core
        # host. Whatever happens here, the encode is waited for before the temporary files are cleaned up.
        with ThreadPoolExecutor(1, thread_name_prefix="wanflow-mp4") as pool:
            encoding = pool.submit(_encode_h264, frames, video, fps,
                                   {"comment": spec_json, "title": "wanflow render"})
            try:
                with disk_full_names(files.spec):
                    spec.write_text(json.dumps(json.loads(spec_json), indent=2, ensure_ascii=False), encoding="utf-8")
                with disk_full_names(files.preview):
                    _save_preview_gif(frames, preview, fps)
                with disk_full_names(files.contact_sheet):
                    _save_contact_sheet(frames, sheet)
            finally:
                wait([encoding])
            with disk_full_names(files.video):
                encoding.result()
    return files


def probe_video(path: Path) -> dict:
    """Read an mp4 back: ``{"frames": uint8 (F, H, W, 3), "codec": str, "pix_fmt": str, "fps": float,
    "size": (w, h), "tags": {key: value}}``, using the ffmpeg binary that imageio-ffmpeg ships."""
    import subprocess

    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    result = subprocess.run(
        [_ffmpeg(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
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
