"""A/B timing of one A14B expert forward, plain diffusers against wanflow's exact fast path, in alternating order.

    python bench/interleaved.py a14b-720p --rounds 5 --out bench/results

``bench/run.py`` times plain diffusers first and wanflow after it, so the GPU is warmer (and its clock may be lower)
for wanflow's forwards. Here the two A14B experts, which have the same structure (random weights; compute does not
depend on the values), are one path each: ``transformer`` stays plain diffusers (PyTorch's default attention, eager),
``transformer_2`` goes through :func:`wanflow.acceleration.accelerate`. After one warm-up each (the compile for
wanflow), the forwards alternate, ABBA order per pair of rounds, each timed with CUDA events and stamped with wall
clock time so that a ``nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu`` log taken alongside
can be matched to them. Writes ``<out>/interleaved-<case>.json`` with every forward's seconds, the medians and their
ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fullsize import build, forward_flops  # noqa: E402
from bench.run import CASES, PROMPT, sync  # noqa: E402
from wanflow.acceleration import accelerate  # noqa: E402
from wanflow.presets import get_preset  # noqa: E402


def run_case(name: str, rounds: int) -> dict:
    case = CASES[name]
    preset = get_preset(case["preset"])
    pipe = build(preset)
    device = torch.device("cuda")
    tokens = preset.tokens(case["width"], case["height"], case["num_frames"])
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(PROMPT, None, do_classifier_free_guidance=False, max_sequence_length=512,
                                       device=device)
    pipe.text_encoder = None
    torch.cuda.empty_cache()
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn(1, 16, (case["num_frames"] - 1) // 4 + 1, case["height"] // 8, case["width"] // 8,
                          device=device, dtype=torch.bfloat16, generator=generator)
    timestep = torch.tensor([900.0], device=device)
    paths = {"plain": pipe.transformer, "wanflow": pipe.transformer_2}
    tags = accelerate({"transformer_2": pipe.transformer_2}, device, tokens, True)
    # set_attention_backend also makes its backend diffusers' process-wide default, which the plain expert's
    # processors (no backend of their own) would follow: pin plain to PyTorch's default SDPA, as in plain diffusers
    pipe.transformer.set_attention_backend("native")

    def forward(module) -> tuple[float, float, float]:
        """(seconds by CUDA events, wall-clock start, wall-clock end)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync()
        wall = time.time()
        start.record()
        with torch.no_grad():
            module(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000, wall, time.time()

    warm_up = {path: forward(module)[0] for path, module in paths.items()}  # wanflow's includes the compile
    order = ["plain", "wanflow"]
    forwards = []
    for r in range(rounds):
        for path in order if r % 2 == 0 else order[::-1]:
            seconds, wall_start, wall_end = forward(paths[path])
            forwards.append({"path": path, "s": seconds, "wall_start": wall_start, "wall_end": wall_end})
            print(f"[{name}] round {r} {path}: {seconds:.3f} s", flush=True)
    median = {path: float(np.median([f["s"] for f in forwards if f["path"] == path])) for path in paths}
    flops = forward_flops(preset.structure, tokens)["total"]
    result = {"case": name, "tokens": tokens, "tags": tags, "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__, "method": f"{rounds} rounds, ABBA order; plain = transformer, wanflow = "
                                                    "transformer_2 (same structure)",
              "warm_up_s": warm_up, "forwards": forwards, "median_s": median,
              "tflops": {path: flops / 1e12 / s for path, s in median.items()},
              "speedup_forward": median["plain"] / median["wanflow"]}
    print(f"[{name}] median plain {median['plain']:.3f} s, wanflow {median['wanflow']:.3f} s: "
          f"{result['speedup_forward']:.3f}x", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=sorted(n for n, c in CASES.items() if not c["whole"]),
                        help="an A14B case (two experts of the same structure)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds; each times one forward of each path")
    parser.add_argument("--out", default="bench/results", help="folder for interleaved-<case>.json")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (one of each order)")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"interleaved-{args.case}.json").write_text(json.dumps(run_case(args.case, args.rounds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
