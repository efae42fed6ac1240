"""GPU benchmark: plain diffusers against wanflow's exact fast path on full-size random-weight Wan2.2 models.

    python bench/run.py ti2v-720p ti2v-preview --out bench/results          # whole renders, both paths
    python bench/run.py a14b-720p a14b-480p --out bench/results             # per-forward timing, extrapolated
    python bench/run.py ti2v-720p --approx fp8,taylorseer --no-plain --out bench/results   # an approximate mode
    python bench/run.py a14b-720p --approx fp8,taylorseer      # A14B: approximate forwards, render extrapolated

Plain diffusers: ``WanPipeline.__call__`` with every setting passed explicitly, bf16, diffusers' default attention
(PyTorch SDPA), eager. wanflow: :func:`wanflow.generate.run_pipeline` on the same modules after
:func:`wanflow.acceleration.accelerate` (the attention backend it picks, compiled blocks). Each case writes
``<out>/<case>[-<approx>].json``; the tables in ``BENCHMARKS.md`` are written from them.

Cases (official settings, FACTS.md §1): ``ti2v-720p`` TI2V-5B 1280x704x121, 50 steps (the headline);
``ti2v-preview`` 640x352x49, 20 steps (the explore loop); ``a14b-720p`` / ``a14b-480p`` T2V-A14B 1280x720x81 /
832x480x81, 40 steps: a whole A14B render takes 16 minutes, so each expert's forward is timed (one warm-up, then
:data:`TIMED_FORWARDS`) and the render is extrapolated from the scheduler's split of the 40 steps between experts,
plus the measured text encoding and VAE decode.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fullsize import build, forward_flops  # noqa: E402
from wanflow.acceleration import accelerate, taylorseer_full_steps  # noqa: E402
from wanflow.generate import run_pipeline, uint8_frames  # noqa: E402
from wanflow.loading import LoadedPipeline, LoadOptions, ModelSource  # noqa: E402
from wanflow.media import to_uint8  # noqa: E402
from wanflow.presets import get_preset  # noqa: E402
from wanflow.spec import RenderSpec  # noqa: E402

CASES = {
    "ti2v-720p": dict(preset="ti2v-5b", width=1280, height=704, num_frames=121, steps=50, whole=True),
    "ti2v-preview": dict(preset="ti2v-5b", width=640, height=352, num_frames=49, steps=20, whole=True),
    "a14b-720p": dict(preset="t2v-a14b", width=1280, height=720, num_frames=81, steps=40, whole=False),
    "a14b-480p": dict(preset="t2v-a14b", width=832, height=480, num_frames=81, steps=40, whole=False),
}
PROMPT = "a red fox runs through fresh snow at dawn, low sun, cinematic tracking shot"
TIMED_FORWARDS = 2


def sync() -> None:
    torch.cuda.synchronize()


def matmul_ceiling(n: int = 8192, repeats: int = 20) -> float:
    """bf16 n^3 matrix product rate in TFLOP/s (the practical ceiling the denoiser is compared with)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


class ForwardTimer:
    """CUDA-event timing of every expert forward (no host syncs until :meth:`seconds` is read)."""

    def __init__(self, experts: dict[str, torch.nn.Module]):
        self.events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.hooks = []
        for name, module in experts.items():
            self.hooks.append(module.register_forward_pre_hook(lambda *_, n=name: self._start(n)))
            self.hooks.append(module.register_forward_hook(lambda *_: self.events[-1][2].record()))

    def _start(self, name: str) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.events.append((name, start, end))

    def seconds(self) -> list[tuple[str, float]]:
        sync()
        return [(name, start.elapsed_time(end) / 1000) for name, start, end in self.events]

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def reset(experts: dict[str, torch.nn.Module], vae: torch.nn.Module) -> None:
    """Back to plain diffusers: default attention, no compiled blocks, channels-first VAE weights (a case may
    follow an accelerated one)."""
    torch.backends.cudnn.benchmark = False  # PyTorch's default
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            module.weight.data = module.weight.data.contiguous()
    for expert in experts.values():
        expert.set_attention_backend("native")
        for module in expert.modules():
            module._compiled_call_impl = None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def plain_render(pipe, spec: RenderSpec, steps: int | None = None) -> tuple[np.ndarray, dict]:
    """Plain diffusers, settings passed explicitly; returns uint8 frames and wall seconds per stage."""
    marks = {}

    def on_step_end(_pipe, i, t, kwargs):
        if i == (steps or spec.num_inference_steps) - 1:
            sync()
            marks["denoised"] = time.perf_counter()
        return {}

    sync()
    started = time.perf_counter()
    out = pipe(prompt=spec.prompt, negative_prompt=spec.negative_prompt, height=spec.height, width=spec.width,
               num_frames=spec.num_frames, num_inference_steps=steps or spec.num_inference_steps,
               guidance_scale=spec.guidance_scale, generator=torch.Generator("cpu").manual_seed(spec.seed),
               output_type="np", callback_on_step_end=on_step_end, max_sequence_length=512)
    sync()
    ended = time.perf_counter()
    return to_uint8(out.frames), {"total": ended - started, "decode": ended - marks["denoised"]}


def whole_render(name: str, case: dict, pipe, approx: tuple[str, ...], ceiling: float, plain_too: bool = True,
                 compile_only: bool = False) -> dict:
    preset = get_preset(case["preset"])
    spec = RenderSpec(preset=preset.name, prompt=PROMPT, seed=0, width=case["width"], height=case["height"],
                      num_frames=case["num_frames"], num_inference_steps=case["steps"], approximations=approx)
    tokens = preset.tokens(spec.width, spec.height, spec.num_frames)
    flops = forward_flops(preset.structure, tokens)
    experts = {"transformer": pipe.transformer}
    result = {"case": name, "spec": json.loads(spec.canonical_json()), "tokens": tokens,
              "tflop_per_forward": flops["total"] / 1e12, "attention_share": flops["attention"] / flops["total"],
              "matmul_ceiling_tflops": ceiling, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    plain = None
    reset(experts, pipe.vae)
    if plain_too and not compile_only:
        plain_render(pipe, spec, steps=2)  # warm-up: cuBLAS/cuDNN handles, allocator
        timer = ForwardTimer(experts)
        torch.cuda.reset_peak_memory_stats()
        plain, seconds = plain_render(pipe, spec)
        forwards = [s for _, s in timer.seconds()]
        timer.close()
        result["plain"] = {**seconds, "s_per_forward": float(np.median(forwards)), "forwards": len(forwards),
                           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        print(f"[{name}] plain diffusers: {seconds['total']:.1f} s, {result['plain']['s_per_forward']:.3f} s/forward",
              flush=True)
    options = LoadOptions(device="cuda", dtype="bfloat16", fast=True)
    started = time.perf_counter()
    tags = accelerate(experts, torch.device("cuda"), tokens, True, approx, vae=pipe.vae)
    loaded = LoadedPipeline(pipe, ModelSource(Path("random-weights"), "random", "random"), options, 0.0, False, tags)
    warm = spec.model_copy(update={"num_inference_steps": 2})
    run_pipeline(loaded, warm, progress=False)  # compiles (first process: full compile; later: Inductor's disk cache)
    result["compile_and_2_steps_s"] = time.perf_counter() - started
    if compile_only:
        print(f"[{name}] compile + 2 steps: {result['compile_and_2_steps_s']:.1f} s", flush=True)
        return result
    timer = ForwardTimer(experts)
    torch.cuda.reset_peak_memory_stats()
    sync()
    started = time.perf_counter()
    generation = run_pipeline(loaded, spec, progress=False)
    sync()
    total = time.perf_counter() - started
    forwards = [s for _, s in timer.seconds()]
    timer.close()
    result["wanflow"] = {**generation.timings, "total": total, "s_per_forward": float(np.median(forwards)),
                         "forwards": len(forwards), "peak_gib": torch.cuda.max_memory_allocated() / 2**30, **tags}
    for path in ("plain", "wanflow"):
        if path in result:
            result[path]["tflops"] = flops["total"] / 1e12 / result[path]["s_per_forward"]
    if plain is not None:
        result["speedup_end_to_end"] = result["plain"]["total"] / total
        result["speedup_forward"] = result["plain"]["s_per_forward"] / result["wanflow"]["s_per_forward"]
        result["psnr_fast_vs_plain_db"] = psnr(plain, generation.frames)
        result["frames_finite"] = bool(np.isfinite(plain.astype(np.float32)).all())
    print(f"[{name}] wanflow {tags}: {total:.1f} s, {result['wanflow']['s_per_forward']:.3f} s/forward "
          f"(compile + 2 steps {result['compile_and_2_steps_s']:.1f} s)", flush=True)
    return result


def forward_only(name: str, case: dict, pipe, ceiling: float, approx: tuple[str, ...] = (),
                 plain_too: bool = True) -> dict:
    """A14B: time each expert's forward, plain and through ``accelerate`` (with ``approx``); extrapolate the
    40-step render. Under ``taylorseer`` only the steps that run the blocks are counted
    (:func:`wanflow.acceleration.taylorseer_full_steps`; the extrapolated steps cost a few elementwise ops)."""
    preset = get_preset(case["preset"])
    spec = RenderSpec(preset=preset.name, prompt=PROMPT, seed=0, width=case["width"], height=case["height"],
                      num_frames=case["num_frames"], num_inference_steps=case["steps"])
    tokens = preset.tokens(spec.width, spec.height, spec.num_frames)
    flops = forward_flops(preset.structure, tokens)
    device = torch.device("cuda")
    sync()
    started = time.perf_counter()
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(spec.prompt, spec.negative_prompt, do_classifier_free_guidance=True,
                                              max_sequence_length=512, device=device)
    sync()
    text_s = time.perf_counter() - started
    frames = (spec.num_frames - 1) // 4 + 1
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn(1, 16, frames, spec.height // 8, spec.width // 8, device=device, dtype=torch.bfloat16,
                          generator=generator)
    timestep = torch.tensor([900.0], device=device)
    experts = {"transformer": pipe.transformer, "transformer_2": pipe.transformer_2}

    def time_expert(module) -> tuple[float, float, torch.Tensor]:
        sync()
        started = time.perf_counter()
        with torch.no_grad():
            out = module(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)[0]
        sync()
        first = time.perf_counter() - started
        timer = ForwardTimer({"x": module})
        with torch.no_grad():
            for _ in range(TIMED_FORWARDS):
                module(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)
        seconds = [s for _, s in timer.seconds()]
        timer.close()
        return first, float(np.median(seconds)), out

    def time_decode(plain: bool) -> tuple[float, float]:
        """VAE decode and frames as each path makes them: plain diffusers' ``output_type="np"``, wanflow's uint8
        on the GPU (:func:`wanflow.generate.uint8_frames`)."""
        z = torch.randn(1, 16, frames, spec.height // 8, spec.width // 8, device=device, dtype=pipe.vae.dtype)
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        started = time.perf_counter()
        with torch.no_grad():
            video = pipe.vae.decode(z, return_dict=False)[0]
            if plain:
                pipe.video_processor.postprocess_video(video, output_type="np")
            else:
                uint8_frames(pipe.video_processor.postprocess_video(video, output_type="pt"))
        sync()
        return time.perf_counter() - started, (torch.cuda.max_memory_allocated() - base) / 2**30

    result = {"case": name, "spec": json.loads(spec.canonical_json()), "tokens": tokens,
              "tflop_per_forward": flops["total"] / 1e12, "attention_share": flops["attention"] / flops["total"],
              "matmul_ceiling_tflops": ceiling, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "text_encode_s": text_s, "method": f"per-expert forward: 1 warm-up + {TIMED_FORWARDS} timed, "
                                                 "render extrapolated"}
    plain_out = {}
    reset(experts, pipe.vae)
    torch.cuda.reset_peak_memory_stats()
    if plain_too:
        result["plain"] = {}
        for expert_name, module in experts.items():
            _, seconds, plain_out[expert_name] = time_expert(module)
            result["plain"][f"s_per_forward_{expert_name}"] = seconds
        result["plain"]["peak_gib_all_on_gpu"] = torch.cuda.max_memory_allocated() / 2**30  # T5 + experts + a forward
        result["plain"]["decode_s"], result["decode_extra_peak_gib"] = time_decode(plain=True)
    tags = accelerate(experts, device, tokens, True, approx, vae=pipe.vae)
    result["wanflow"] = dict(tags)
    for expert_name, module in experts.items():
        first, seconds, out = time_expert(module)
        result["wanflow"][f"s_per_forward_{expert_name}"] = seconds
        result["wanflow"][f"first_forward_s_{expert_name}"] = first  # includes compiling (once for both experts)
        if plain_too:
            diff = (out.float() - plain_out[expert_name].float())
            result["wanflow"][f"rel_error_{expert_name}"] = float(diff.norm() / plain_out[expert_name].float().norm())
    result["wanflow"]["decode_s_first"], _ = time_decode(plain=False)  # includes cuDNN's algorithm search
    result["wanflow"]["decode_s"], _ = time_decode(plain=False)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=spec.flow_shift)
    pipe.scheduler.set_timesteps(spec.num_inference_steps, device=device)
    high = int((pipe.scheduler.timesteps >= preset.boundary_ratio * 1000).sum())
    result["steps_per_expert"] = {"transformer": high, "transformer_2": spec.num_inference_steps - high}
    full = {e: taylorseer_full_steps(n) if "taylorseer" in approx else n for e, n in result["steps_per_expert"].items()}
    result["full_steps_per_expert"] = full
    result["param_gib"] = {name: sum(p.numel() * p.element_size() for p in module.parameters()) / 2**30
                           for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    for path in ("plain", "wanflow") if plain_too else ("wanflow",):
        r = result[path]
        steps = result["steps_per_expert"] if path == "plain" else full
        denoise = 2 * sum(steps[e] * r[f"s_per_forward_{e}"] for e in experts)
        r["denoise_s_extrapolated"] = denoise
        r["total_extrapolated"] = text_s + denoise + r["decode_s"]
        r["tflops"] = flops["total"] / 1e12 / r["s_per_forward_transformer"]
    if plain_too:
        plain = result["plain"]
        result["speedup_end_to_end"] = plain["total_extrapolated"] / result["wanflow"]["total_extrapolated"]
        result["speedup_forward"] = plain["s_per_forward_transformer"] / result["wanflow"]["s_per_forward_transformer"]
    print(f"[{name}] wanflow {result['wanflow']['s_per_forward_transformer']:.2f} s/forward ({tags}); render ~"
          f"{result['wanflow']['total_extrapolated']:.0f} s; {json.dumps(result, default=str)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", choices=sorted(CASES))
    parser.add_argument("--out", default="bench/results", help="folder for <case>.json")
    parser.add_argument("--approx", default="", help="approximations, comma-separated (A14B cases: per-forward speed, "
                        "render extrapolated over the steps that run)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain diffusers path")
    parser.add_argument("--compile-only", action="store_true",
                        help="only accelerate + a 2-step render: the compile time of this process (run twice to "
                             "see Inductor's disk cache at work)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    approx = tuple(sorted(a for a in args.approx.split(",") if a))
    ceiling = matmul_ceiling()
    print(f"bf16 matmul ceiling: {ceiling:.0f} TFLOP/s on {torch.cuda.get_device_name()}", flush=True)
    pipes = {}
    for name in args.cases:
        case = CASES[name]
        if case["preset"] not in pipes:
            pipes.clear()
            torch.cuda.empty_cache()
            started = time.perf_counter()
            pipes[case["preset"]] = build(get_preset(case["preset"]))
            print(f"built {case['preset']} with random weights in {time.perf_counter() - started:.0f} s", flush=True)
        pipe = pipes[case["preset"]]
        pipe.set_progress_bar_config(disable=True)
        try:
            if case["whole"]:
                result = whole_render(name, case, pipe, approx, ceiling, not args.no_plain, args.compile_only)
            else:
                result = forward_only(name, case, pipe, ceiling, approx, not args.no_plain)
        except Exception as err:  # one broken case must not lose the others
            import traceback

            traceback.print_exc()
            result = {"case": name, "error": f"{type(err).__name__}: {err}"}
        stem = name + (f"-{'+'.join(approx)}" if approx else "") + ("-compile" if args.compile_only else "")
        if args.compile_only:
            stem += "-" + str(len(list(out.glob(f"{stem}*.json"))) + 1)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
