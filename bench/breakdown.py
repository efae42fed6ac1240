"""Where the GPU time of wanflow's exact fast path goes: one transformer forward and one VAE decode, by kernel kind.

    python bench/breakdown.py ti2v-720p a14b-720p --out bench/results      # ~1-2 min per case on one H200

Full-size random-weight models (``bench/fullsize.py``) through :func:`wanflow.acceleration.accelerate` (the
attention backend it picks, compiled blocks, channels-last VAE), one warm-up, :data:`TIMED` forwards timed with CUDA
events, then one forward and one decode under ``torch.profiler``. Every CUDA kernel is put in one kind by its name
(:func:`kind`): attention, matrix products, Inductor's fused Triton kernels, convolutions, copies, other eager
kernels. Writes ``<out>/breakdown-<case>.json``; ``BENCHMARKS.md`` ("What limits it") is written from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fullsize import build  # noqa: E402
from bench.run import CASES  # noqa: E402
from wanflow.acceleration import accelerate  # noqa: E402
from wanflow.presets import get_preset  # noqa: E402

TIMED = 3
TOP = 12


def kind(kernel: str) -> str:
    """The kind of a CUDA kernel, from its name (cuDNN / cuBLAS / Inductor / ATen naming)."""
    name = kernel.lower()
    if "sdpa" in name or "fmha" in name or "flash" in name or "attention" in name.split("_fused_")[0]:
        return "attention"
    if "conv" in name or "fprop" in name or "nchwtonhwc" in name or "nhwctonchw" in name:
        return "convolution"
    if "gemm" in name or "nvjet" in name or "gemv" in name or "cutlass" in name:
        return "matrix product"
    if name.startswith("triton"):
        return "fused elementwise (Inductor)"
    if "copy" in name or "memcpy" in name or "memset" in name or "cat" in name.split("<")[0]:
        return "copy"
    return "other eager"


def profiled(fn) -> dict:
    """GPU seconds of ``fn()`` by kernel kind, and its :data:`TOP` kernels."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    by_kind, by_kernel = defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            seconds = event.self_device_time_total / 1e6
            by_kind[kind(event.key)] += seconds
            by_kernel[event.key[:100]] += seconds
    total = sum(by_kind.values())
    return {"gpu_s": total, "by_kind_s": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "share": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_kernels_s": dict(sorted(by_kernel.items(), key=lambda kv: -kv[1])[:TOP])}


def profile_case(name: str) -> dict:
    case = CASES[name]
    preset = get_preset(case["preset"])
    pipe = build(preset)
    pipe.transformer_2 = None  # one expert is enough: both have the same structure
    pipe.text_encoder = None
    torch.cuda.empty_cache()
    device = torch.device("cuda")
    tokens = preset.tokens(case["width"], case["height"], case["num_frames"])
    tags = accelerate({"transformer": pipe.transformer}, device, tokens, True, vae=pipe.vae)
    generator = torch.Generator(device).manual_seed(0)
    latent = (1, pipe.transformer.config.in_channels, (case["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1,
              case["height"] // pipe.vae_scale_factor_spatial, case["width"] // pipe.vae_scale_factor_spatial)
    latents = torch.randn(latent, device=device, dtype=torch.bfloat16, generator=generator)
    embeds = torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16, generator=generator)
    timestep = torch.tensor([900.0], device=device)  # one per sample, as the fast path gives it (uniform_timestep)

    def forward():
        with torch.no_grad():
            return pipe.transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds,
                                    return_dict=False)[0]

    def decode():
        with torch.no_grad():
            return pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]

    started = time.perf_counter()
    forward()
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TIMED):
        forward()
    end.record()
    end.synchronize()
    decode()  # cuDNN's algorithm search
    result = {"case": name, "tokens": tokens, "tags": tags, "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__, "first_forward_s": first,
              "forward_s": start.elapsed_time(end) / 1000 / TIMED, "forward": profiled(forward),
              "decode": profiled(decode)}
    print(f"[{name}] forward {result['forward_s']:.3f} s: "
          + ", ".join(f"{k} {v:.0%}" for k, v in result["forward"]["share"].items())
          + f"; decode {result['decode']['gpu_s']:.2f} s: "
          + ", ".join(f"{k} {v:.0%}" for k, v in result["decode"]["share"].items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", choices=sorted(CASES))
    parser.add_argument("--out", default="bench/results", help="folder for breakdown-<case>.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        (out / f"breakdown-{name}.json").write_text(json.dumps(profile_case(name), indent=1))
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
