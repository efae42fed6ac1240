"""Kit overhead of a TI2V-5B 720p render: everything wanflow does outside denoising and decoding.

    python bench/overhead.py --out bench/results/overhead-ti2v-720p.json

Times, on this machine's CPU (the work runs on the CPU on a GPU machine too): writing the four files of a
1280x704x121 render (:func:`wanflow.media.write_outputs`: H.264 mp4, preview gif, contact sheet, spec.json),
:func:`wanflow.quality.frame_metrics`, and logging the run (:class:`wanflow.tracking.RenderRun`: params, tags,
metrics, the four artifacts) into a SQLite store that already exists (creating one is a one-off). The frames are a synthetic scene with the statistics of a
render (smooth gradients, moving shapes, fine grain), since x264's speed depends on content. The share is against
the measured wanflow TI2V-5B 720p render on one H200 (``bench/results/ti2v-720p.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scene(width: int = 1280, height: int = 704, frames: int = 121, seed: int = 0) -> np.ndarray:
    """uint8 (F, H, W, 3): a slowly panning colour gradient, three moving discs and sigma-3 grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        shift = f * 4.0
        img = np.stack([(x + shift) / width * 200, y / height * 180 + 30, (x + y - shift) / (width + height) * 220], -1)
        for k, (cx, cy, r) in enumerate(((300, 300, 90), (800, 400, 120), (1000, 200, 60))):
            mask = (x - cx - f * (3 + k)) ** 2 + (y - cy) ** 2 < r * r
            img[mask] = (230 - 60 * k, 40 + 70 * k, 90)
        img += rng.normal(0, 3, img.shape[:2] + (1,))
        out[f] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/overhead-ti2v-720p.json")
    parser.add_argument("--render", default="bench/results/ti2v-720p.json", help="the GPU render to compare with")
    args = parser.parse_args(argv)
    from wanflow.media import write_outputs
    from wanflow.quality import frame_metrics
    from wanflow.spec import RenderSpec
    from wanflow.tracking import RenderRun, client_and_experiment

    frames = scene()
    spec = RenderSpec(preset="ti2v-5b", prompt="a red fox runs through fresh snow at dawn", seed=0)
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        files = write_outputs(frames, Path(folder) / "render", spec.canonical_json(), spec.fps)
        seconds["write_files"] = time.perf_counter() - started
        started = time.perf_counter()
        metrics = frame_metrics(frames, None)
        seconds["frame_metrics"] = time.perf_counter() - started
        uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        client_and_experiment(uri)  # the store exists already in steady use (its creation is a one-off)
        started = time.perf_counter()
        run = RenderRun.start(spec.to_params(), {"stage": "draft"}, "bench", uri)
        seconds["log_start"] = time.perf_counter() - started
        seconds["log_finish"] = run.finish(metrics, {"bench": "true"}, list(files.as_dict().values()))
        sizes = {name: os.path.getsize(path) for name, path in files.as_dict().items()}
    overhead = sum(seconds.values())
    render = json.loads(Path(args.render).read_text())["wanflow"]
    gpu_total = render["total"]
    result = {"seconds": seconds, "overhead_s": overhead, "file_bytes": sizes, "cpu_count": os.cpu_count(),
              "gpu_render_s": gpu_total, "share_of_render": overhead / (gpu_total + overhead)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
