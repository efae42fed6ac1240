"""The mp4 part of the kit overhead on a host without an ffmpeg binary: wanflow's x264 settings through PyAV.

    pip install av && python bench/x264_threads.py

The benchmark GPU host has no ffmpeg, and imageio-ffmpeg's wheel (68 MB) does not travel to it, so
``bench/overhead.py`` cannot run there. PyAV's wheel bundles libx264: this encodes ``bench/overhead.py``'s
1280x704x121 scene with wanflow's settings (libx264, ``veryfast``, CRF 17, yuv420p; :mod:`wanflow.media`) using
all cores and using 2, then times the preview gif, the contact sheet and the flicker metric, the other CPU work of a
render's files. On the 2-core CI box PyAV's x264 took 4.56 s against 4.80 s for ``write_outputs`` (ffmpeg, with the
gif and sheet alongside), so it stands in for the mp4 encode.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def encode(frames, path: Path, threads: int) -> float:
    """Seconds to write ``frames`` (F, H, W, 3 uint8) as H.264 with ``threads`` x264 threads (0: all)."""
    import av

    started = time.perf_counter()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "17", "preset": "veryfast"}
        stream.codec_context.thread_count = threads
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return time.perf_counter() - started


def main() -> int:
    from bench.overhead import scene
    from wanflow.media import write_contact_sheet, write_preview_gif
    from wanflow.quality import frame_metrics

    frames = scene()
    result = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["x264_all_threads_s"] = encode(frames, folder / "a.mp4", 0)
        result["x264_2_threads_s"] = encode(frames, folder / "b.mp4", 2)
        for name, work in (("gif_s", lambda: write_preview_gif(frames, folder / "p.gif", 24)),
                           ("contact_sheet_s", lambda: write_contact_sheet(frames, folder / "s.png")),
                           ("flicker_s", lambda: frame_metrics(frames, None))):
            started = time.perf_counter()
            work()
            result[name] = time.perf_counter() - started
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
