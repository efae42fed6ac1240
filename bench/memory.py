"""GPU memory modes: peak memory and time of each way of placing a full-size random-weight pipeline.

    python bench/memory.py ti2v-720p --out bench/results          # every mode of MODES, each in its own process
    python bench/memory.py a14b-720p --modes group-offload --out bench/results

Each mode runs in a fresh process (clean CUDA memory statistics and hooks), places the pipeline through
:class:`wanflow.loading.LoadOptions` exactly as a render would, renders :data:`STEPS` steps at the case's size
with :func:`wanflow.generate.run_pipeline`, and records the peak allocated GPU memory and seconds per step,
text encoding and decode; ``render_s_estimated`` = text + steps x s_per_step + decode.
Writes ``<out>/memory-<case>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {
    "none": {},
    "t5-cpu": {"t5_cpu": True},
    "model-offload": {"offload_model": True},
    "model-offload+vae-tiling": {"offload_model": True, "vae_tiling": True},
    "group-offload": {"group_offload": True},
    "group-offload+t5-cpu+vae-tiling": {"group_offload": True, "t5_cpu": True, "vae_tiling": True},
}
STEPS = 2
#: The negative prompt the benchmark encodes: 128 word-level tokens, an assumed length. UMT5's tokenizer is not on
#: this machine to count Wan's own (137 Chinese characters; its sentencepiece pieces are mostly one or two
#: characters). Text encoding reads the longer text's tokens (``wanflow.generate.encode_text``), so this sets its cost.
NEGATIVE = " ".join(["blurry"] * 127)


def one(case_name: str, mode: str, steps: int = STEPS) -> dict:
    import torch

    from bench.fullsize import build
    from bench.run import CASES, PROMPT
    from wanflow.generate import run_pipeline
    from wanflow.loading import LoadedPipeline, LoadOptions, ModelSource, _place
    from wanflow.presets import get_preset
    from wanflow.spec import RenderSpec

    case = CASES[case_name]
    preset = get_preset(case["preset"])
    pipe = build(preset)  # on the GPU (fast random init); the options below move what they offload to the CPU
    pipe.set_progress_bar_config(disable=True)
    options = LoadOptions(device="cuda", dtype="bfloat16", fast=False, **MODES[mode])
    _place(pipe, options)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    spec = RenderSpec(preset=preset.name, prompt=PROMPT, negative_prompt=NEGATIVE, seed=0, width=case["width"],
                      height=case["height"], num_frames=case["num_frames"], num_inference_steps=case["steps"])
    loaded = LoadedPipeline(pipe, ModelSource(Path("random-weights"), "random", "random"), options, 0.0, False, {})
    # render only STEPS of the case's steps: same memory, time per step measured
    short = spec.model_copy(update={"num_inference_steps": steps})
    started = time.perf_counter()
    generation = run_pipeline(loaded, short, progress=False)
    t = generation.timings
    per_step = t["denoise"] / steps
    return {"case": case_name, "mode": mode, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "text_encode_s": t["text_encode"], "s_per_step": per_step, "decode_s": t["decode"],
            "render_s_estimated": t["text_encode"] + case["steps"] * per_step + t["decode"],
            "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps rendered per mode (default {STEPS})")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one mode
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if args.one:
        print(json.dumps(one(args.case, modes[0], args.steps)))
        return 0
    results = []
    for mode in modes:
        proc = subprocess.run([sys.executable, __file__, args.case, "--modes", mode, "--one", "--steps", str(args.steps)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({"case": args.case, "mode": mode, "error": proc.stderr[-2000:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1])[:400], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"memory-{args.case}.json"
    earlier = json.loads(path.read_text()) if path.exists() else []
    kept = [r for r in earlier if r.get("mode") not in modes]
    path.write_text(json.dumps(kept + results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
