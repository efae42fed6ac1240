"""Quality cost of an approximation, on the micro models (the only models here whose output means something).

    python bench/approx_quality.py --approx first-block-cache --out bench/results/quality-first-block-cache.json

Renders held-out prompts with and without the approximation (same spec otherwise) and reports the PSNR of the
approximate frames against the exact ones, and prompt adherence (:func:`wanflow.quality.adherence`) of both.
Runs on the CPU (``first-block-cache``) or a GPU (``--device cuda``, needed for ``fp8``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--approx", default="first-block-cache")
    parser.add_argument("--presets", default="micro-ti2v,micro-a14b")
    parser.add_argument("--prompts", type=int, default=4, help="first N held-out prompts")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPUs), float32, bfloat16; "
                        "fp8 needs bfloat16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from bench.run import psnr
    from wanflow.generate import generate
    from wanflow.loading import LoadOptions
    from wanflow.micro.data import HELDOUT_PROMPTS
    from wanflow.quality import adherence
    from wanflow.spec import RenderSpec

    options = LoadOptions(device=args.device, dtype=args.dtype)
    rows = []
    for preset in args.presets.split(","):
        for approximations in ((), tuple(args.approx.split(","))):
            for prompt in HELDOUT_PROMPTS[: args.prompts]:
                spec = RenderSpec(preset=preset, prompt=prompt, seed=0, approximations=approximations,
                                  num_inference_steps=args.steps)
                started = time.perf_counter()
                frames = generate(spec, options, progress=False).frames
                rows.append({"preset": preset, "approx": ",".join(approximations) or "exact", "prompt": prompt,
                             "seconds": time.perf_counter() - started, "adherence": adherence(frames, prompt),
                             "frames": frames})
    summary = {}
    for preset in args.presets.split(","):
        exact = [r for r in rows if r["preset"] == preset and r["approx"] == "exact"]
        approx = [r for r in rows if r["preset"] == preset and r["approx"] != "exact"]
        summary[preset] = {
            "psnr_db_mean": float(np.mean([min(psnr(a["frames"], b["frames"]), 99.0) for a, b in zip(exact, approx)])),
            "adherence_exact": float(np.mean([r["adherence"] for r in exact])),
            "adherence_approx": float(np.mean([r["adherence"] for r in approx])),
            "seconds_exact": float(np.mean([r["seconds"] for r in exact])),
            "seconds_approx": float(np.mean([r["seconds"] for r in approx])),
            "prompts": len(exact), "device": args.device, "dtype": args.dtype, "approx": args.approx,
            "steps": args.steps or "preset",
        }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
