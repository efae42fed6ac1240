"""How fast a render runs on a GPU: the attention backend, regional compilation, the VAE's layout, and the opt-in
approximations.

Exact path (same math, bf16 noise only), on by default on CUDA (``LoadOptions.fast``):

- **attention backend**: the fastest exact kernel this machine has, measured once per GPU, torch version and head
  shape (:func:`pick_attention`) among diffusers' exact backends (FlashAttention 4 where ``flash-attn-4`` is
  installed (:func:`provide_flash_attention_4`), FlashAttention 3/2, cuDNN, PyTorch's
  flash and memory-efficient kernels, PyTorch's default), set on every expert. Attention is 53% of TI2V-5B's and
  72% of an A14B expert's FLOPs at 720p, and on one H200 FlashAttention 4 ran at 671 TFLOP/s, cuDNN (what plain
  diffusers runs) at 572 and PyTorch's flash kernel at 363 (A14B 720p; ``FACTS.md`` §2), so the kernel decides the
  speed. The choice is a run tag.
- **one timestep per sample** for TI2V-5B text-to-video (:func:`uniform_timestep`): without an image every token
  has the same timestep, so the transformer embeds one instead of one per token.
- **regional compilation** (``compile_repeated_blocks``: the transformer block is compiled once and reused by every
  block of both experts). Inductor's on-disk caches (FX graph and AOTAutograd) are kept under
  ``$WANFLOW_CACHE/inductor`` instead of ``/tmp``; on one H200 a second process still paid about the same compile
  (Dynamo's tracing dominates; ``BENCHMARKS.md``).
- **channels-last VAE** (:func:`channels_last`) with cuDNN's autotuning: the convolutions run without layout
  conversions.

Where the time then goes (``bench/breakdown.py``): at 720p, with FlashAttention 4, attention is 52% (TI2V-5B) and
71% (an A14B expert) of a forward's GPU time and the matrix products run near the bf16 ceiling, so the attention
kernel sets the limit.

Approximations (``RenderSpec.approximations``; they change the frames, so they are part of the spec and its id):

- ``first-block-cache``: diffusers' First Block Cache on every expert (threshold :data:`FIRST_BLOCK_CACHE_THRESHOLD`):
  a step whose first block's residual barely changed reuses the cached residual of the other blocks.
- ``taylorseer``: diffusers' TaylorSeer cache (Liu et al. 2025, arXiv 2503.06923) in its lite form on every expert:
  full forwards on the first :data:`TAYLORSEER_WARMUP` of each expert's own steps (at least 3), then one every
  :data:`TAYLORSEER_INTERVAL` steps (an expert with fewer than :data:`TAYLORSEER_MIN_STEPS` steps runs them all);
  on the steps between, no block runs and the output of ``proj_out`` is extrapolated to first order from the last
  two full forwards. The skipped steps are fixed in advance, so the
  speed-up does not depend on the weights. Lite, because the full form keeps two feature maps per block per CFG
  branch: ~20 GiB for TI2V-5B 720p and over 100 GiB for an A14B expert.
- ``fp8``: torchao float8 dynamic activation + float8 per-row weight quantization of the linear layers in every
  expert's blocks (:func:`fp8_layer`; compute capability >= 8.9: H100, L40S, RTX 4090; not the A100).
- ``sage-attention``: diffusers' ``sage`` backend (SageAttention >= 2.1.1, int8 QK / fp8 PV), when installed.

The step caches (``first-block-cache``, ``taylorseer``) are put on the experts for one render at a time
(:func:`step_cache`): TaylorSeer's schedule depends on each expert's step count, and no cache state can leak from
one render into the next. Their hooks run eagerly around compiled blocks (:func:`compile_under_hooks`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch

from wanflow.spec import STEP_CACHES

#: diffusers' exact attention backends that :func:`pick_attention` times; the fastest on the machine wins, so the order
#: only breaks ties. On an H200 (2026-11-30, ``bench/results/fa4-attention.json``) FlashAttention 4 ran A14B 720p
#: self-attention at 671 TFLOP/s, cuDNN at 572 and PyTorch's flash kernel at 363, all three within bf16 noise of
#: each other (relative L2 0.3%). ``flash_4_hub`` is only a candidate when :func:`provide_flash_attention_4` has given
#: diffusers the kernel of the installed ``flash-attn-4`` package: wanflow never downloads a kernel from the Hub.
#: FlashAttention 3 and 2 (``_flash_3``, ``flash``) are timed where installed, never measured here. ``native`` is
#: ``F.scaled_dot_product_attention`` with PyTorch's own choice: always available, the fallback.
EXACT_ATTENTION = ("flash_4_hub", "_flash_3", "flash", "_native_cudnn", "_native_flash", "_native_efficient", "native")
#: Compute capabilities (major) whose forward FlashAttention 4 runs: 8.x to 12.x (``flash_attn/cute/interface.py``
#: of flash-attn-4 4.0.0b36 asserts these; it is built for Hopper (9.x, ``flash_fwd_sm90.py``) and Blackwell (10.x,
#: ``flash_fwd_sm100.py``) and has Ampere-style kernels for 8.x and 12.x). Measured only on an H200; elsewhere
#: :func:`pick_attention`'s timing decides whether it is used.
FLASH_ATTENTION_4_MAJORS = (8, 9, 10, 11, 12)
#: diffusers' default First Block Cache threshold (``FirstBlockCacheConfig``): mean absolute relative change of the
#: first block's residual below which a step reuses the cache.
FIRST_BLOCK_CACHE_THRESHOLD = 0.05
#: TaylorSeer: full forwards on the first TAYLORSEER_WARMUP of an expert's steps (at least 3), then one every
#: TAYLORSEER_INTERVAL steps. diffusers' defaults (3 steps, every 5th) broke micro-ti2v at 20 steps: PSNR 12 dB
#: against exact, adherence 0.38 vs 1.0 (8 held-out prompts, CPU); warm-up 30% and every 3rd kept adherence at
#: 0.92 (PSNR 33 dB) (``bench/approx_quality.py --approx taylorseer --prompts 8``). micro-a14b: see
#: TAYLORSEER_MIN_STEPS.
TAYLORSEER_WARMUP, TAYLORSEER_INTERVAL = 0.3, 3
#: An expert with fewer steps than this runs them all in full under ``taylorseer``. With the warm-up counted per
#: expert, micro-a14b lost its prompt when its experts ran 9 / 11 steps (20-step render: PSNR 15.7 dB against
#: exact, adherence 0.67) or 11 / 13 (24 steps: 21.4 dB, 0.75), and kept it at 12 / 16 (28 steps: 35.4 dB, 1.0) and
#: 17 / 23 (40 steps: 37.2 dB, 1.0); with this minimum, 24 steps gives 30.3 dB, 1.0 (8 held-out prompts,
#: ``bench/results/quality-taylorseer-steps.json``).
TAYLORSEER_MIN_STEPS = 12
#: Most tokens used when timing attention kernels (the ranking is stable past a few thousand tokens; this keeps the
#: one-off measurement under a few seconds even for A14B 720p, 75,600 tokens).
MAX_TIMED_TOKENS = 32768


def _cache_file() -> Path:
    from wanflow.tiny import cache_root

    return cache_root() / "attention.json"


def use_inductor_cache() -> Path:
    """Point Inductor's on-disk caches at ``$WANFLOW_CACHE/inductor`` (unless ``TORCHINDUCTOR_CACHE_DIR`` is set)
    and make sure the FX graph and AOTAutograd caches are on. Returns the folder."""
    from wanflow.tiny import cache_root

    folder = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor")))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


@torch.library.custom_op("wanflow::flash_attention_4", mutates_args=())
def flash_attention_4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None,
                      causal: bool = False) -> torch.Tensor:
    """FlashAttention 4's forward (``flash_attn.cute.flash_attn_func`` of the ``flash-attn-4`` package) as a PyTorch
    custom operator, so that ``torch.compile(fullgraph=True)`` keeps the transformer block in one graph around it
    (the package's own function is a Python autograd function that launches a CuTe DSL kernel, which Dynamo cannot
    trace). ``q``: (batch, tokens, heads, head_dim); ``k``, ``v``: (batch, kv_tokens, heads, head_dim), bf16 or fp16
    on a GPU of :data:`FLASH_ATTENTION_4_MAJORS`. Returns (batch, tokens, heads, v's head_dim)."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)
    return out[0] if isinstance(out, tuple) else out


@flash_attention_4.register_fake
def _(q, k, v, softmax_scale=None, causal=False):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def provide_flash_attention_4(device: torch.device) -> str | None:
    """Give diffusers' ``flash_4_hub`` attention backend the FlashAttention 4 kernel of the installed ``flash-attn-4``
    package (:func:`flash_attention_4`), so that the backend runs without downloading ``kernels-community/flash-attn4``
    from the Hugging Face Hub: offline, and no remote code. The kernel is set once per process; one diffusers
    already has is kept.

    Returns the package's version (``"4.0.0b36"``), or None where FlashAttention 4 cannot run here: no CUDA
    ``device`` (or an index past the GPU count), a GPU it has no kernel for (:data:`FLASH_ATTENTION_4_MAJORS`),
    ``flash-attn-4`` not installed; and, with a ``RuntimeWarning`` once per process, ``flash-attn-4`` installed but
    failing to import, or diffusers' requirement for the backend not met (the ``kernels`` package >= 0.12.3).
    Install both with ``pip install 'wanflow[fa4]'``.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    if device.index is not None and device.index >= torch.cuda.device_count():
        return None
    if torch.cuda.get_device_capability(device)[0] not in FLASH_ATTENTION_4_MAJORS:
        return None
    from importlib.metadata import PackageNotFoundError, version

    from diffusers.models import attention_dispatch as dispatch

    try:
        found = version("flash-attn-4")  # not flash-attn 2, which also installs a `flash_attn` package
    except PackageNotFoundError:
        return None
    try:
        if importlib.util.find_spec("flash_attn.cute") is None:
            raise ImportError("it has no flash_attn.cute module")
    except Exception as err:  # noqa: BLE001 - a package that fails to import (missing CUDA library, ...) is not usable
        _warn_once(f"flash-attn-4 {found} is installed but cannot be imported ({type(err).__name__}: {err}); "
                   "FlashAttention 4 is not used")
        return None
    backend = dispatch.AttentionBackendName.FLASH_4_HUB
    try:
        dispatch._check_attention_backend_requirements(backend)
    except RuntimeError as err:  # diffusers' requirement for the backend: the kernels package
        _warn_once(f"flash-attn-4 {found} is installed but diffusers' flash_4_hub backend refuses to run: {err} "
                   f"(`pip install 'wanflow[fa4]'` installs both); FlashAttention 4 is not used")
        return None
    config = dispatch._HUB_KERNELS_REGISTRY[backend]
    if config.kernel_fn is None:
        config.kernel_fn = flash_attention_4
    # the CuTe DSL says this about an argument of flash-attn-4's own kernel on its first call (4.0.0b36, H200):
    # nothing a user can act on
    warnings.filterwarnings("ignore", message=r"Argument aux_data .* cannot be converted to a JitArgument",
                            category=UserWarning)
    return found


def _read_cache(path: Path) -> dict:
    """The remembered attention timings, or {} when the file is missing or not a JSON object (a damaged cache is
    measured again and rewritten, not an error)."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _time_backend(backend: str, q: torch.Tensor, reference: torch.Tensor | None, repeats: int = 5) -> float | None:
    """Seconds per call of ``backend`` on (B, S, H, D) inputs, or None if it is missing, fails, or (exactness
    check) differs from PyTorch's default by more than bf16 noise."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    try:
        out = dispatch_attention_fn(q, q, q, backend=backend)
        if reference is not None and (out.float() - reference.float()).abs().max().item() > 0.05:
            return None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            dispatch_attention_fn(q, q, q, backend=backend)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / repeats
    except Exception:  # not installed, wrong GPU, unsupported shape: not a candidate
        return None


def pick_attention(device: torch.device, heads: int, head_dim: int, tokens: int,
                   candidates: Iterable[str] = EXACT_ATTENTION) -> tuple[str, dict[str, float]]:
    """The fastest exact attention backend for (``tokens``, ``heads`` x ``head_dim``) on ``device``, and the seconds
    each candidate took (missing / failing ones left out).

    Measured once with bf16 random inputs (at most :data:`MAX_TIMED_TOKENS` tokens) and remembered in
    ``$WANFLOW_CACHE/attention.json`` per GPU name, torch, diffusers and ``flash-attn-4`` version and shape. On CPU
    (or MPS) it is ``native`` without measuring. ``flash_4_hub`` is timed only where
    :func:`provide_flash_attention_4` can give diffusers the installed kernel.
    """
    if device.type != "cuda":
        return "native", {}
    import diffusers

    fa4 = provide_flash_attention_4(device)
    candidates = [name for name in candidates if fa4 or name != "flash_4_hub"]  # read twice below
    tokens = min(tokens, MAX_TIMED_TOKENS)
    key = (f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}|diffusers {diffusers.__version__}"
           f"{f'|flash-attn-4 {fa4}' if fa4 else ''}|{heads}x{head_dim}|{tokens}")
    path = _cache_file()
    known = _read_cache(path)
    entry = known.get(key)
    if (isinstance(entry, dict) and entry.get("backend") in (*candidates, "native")
            and isinstance(entry.get("seconds"), dict)):
        return entry["backend"], entry["seconds"]
    generator = torch.Generator(device).manual_seed(0)
    q = torch.randn(1, tokens, heads, head_dim, device=device, dtype=torch.bfloat16, generator=generator)
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    reference = dispatch_attention_fn(q, q, q, backend="native")
    seconds = {}
    for backend in candidates:
        took = _time_backend(backend, q, reference)
        if took is not None:
            seconds[backend] = took
    best = min(seconds, key=seconds.get) if seconds else "native"
    known[key] = {"backend": best, "seconds": seconds, "measured": time.strftime("%Y-%m-%d")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(path)
    return best, seconds


def check_approximations(names: Iterable[str], device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Refuse approximations this machine (or the chosen ``dtype`` of the weights) cannot run, before any model work.

    Raises:
        ValueError: ``approximations: ...`` naming what is missing (``fp8`` and ``sage-attention`` need a CUDA
            GPU; ``fp8`` bfloat16 weights, compute capability >= 8.9 and torchao; ``sage-attention``
            SageAttention >= 2.1.1).
    """
    names = set(names)
    gpu_only = sorted(names & {"fp8", "sage-attention"})
    if gpu_only and device.type != "cuda":
        one = len(gpu_only) == 1
        raise ValueError(f"approximations: {', '.join(gpu_only)} {'runs' if one else 'run'} on CUDA GPUs only; this "
                         f"render runs on {device.type} (drop {'it' if one else 'them'}, or use --device cuda)")
    if "fp8" in names and dtype is not None and dtype != torch.bfloat16:
        raise ValueError(f"approximations: fp8 quantizes bfloat16 weights; this render loads "
                         f"{str(dtype).removeprefix('torch.')} (use --dtype bfloat16, the GPU default)")
    if "fp8" in names:
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(f"approximations: fp8 needs compute capability >= 8.9 (H100, L40S, RTX 4090); "
                             f"{torch.cuda.get_device_name(device)} is sm{major}{minor}")
        if importlib.util.find_spec("torchao") is None:
            raise ValueError("approximations: fp8 needs torchao (`pip install torchao`)")
    if "sage-attention" in names:
        from diffusers.utils import is_sageattention_available

        if not is_sageattention_available():
            raise ValueError("approximations: sage-attention needs SageAttention >= 2.1.1 "
                             "(built for this GPU: see github.com/thu-ml/SageAttention)")


def fp8_layer(module: torch.nn.Module, name: str = "") -> bool:
    """Which layers ``fp8`` quantizes (``name``: the layer's path in the expert): the bfloat16 ``nn.Linear``
    layers inside the transformer blocks (``blocks.N...``, where the FLOPs are) whose in and out features are
    multiples of 16 (``torch._scaled_mm``'s requirement). The embedders and ``proj_out`` stay bfloat16:
    quantizing them too turned every micro-model frame to NaN (H200, 2026-11-29); blocks only gives PSNR 36.5 /
    33.8 dB against exact bfloat16 with prompt adherence unchanged (micro-ti2v / micro-a14b, 8 held-out prompts;
    ``bench/results/quality-cuda-bf16.json``).
    Layers diffusers keeps in float32 (``_keep_in_fp32_modules``) are left alone as well."""
    return (name.startswith("blocks.") and isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def step_cache_config(approximations: Iterable[str], steps: int):
    """The diffusers cache config of the step cache among ``approximations`` for an expert that runs ``steps``
    denoising steps of a render, or None when there is none."""
    approximations = set(approximations)
    if "first-block-cache" in approximations:
        from diffusers import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=FIRST_BLOCK_CACHE_THRESHOLD)
    if "taylorseer" in approximations and steps >= TAYLORSEER_MIN_STEPS:
        from diffusers import TaylorSeerCacheConfig

        return TaylorSeerCacheConfig(cache_interval=TAYLORSEER_INTERVAL, max_order=1, use_lite_mode=True,
                                     disable_cache_before_step=taylorseer_warmup(steps))
    return None


def taylorseer_warmup(steps: int) -> int:
    """Full forwards before TaylorSeer starts skipping, for an expert that runs ``steps`` steps:
    ``max(3, ceil(TAYLORSEER_WARMUP * steps))``."""
    return max(3, math.ceil(TAYLORSEER_WARMUP * steps))


def taylorseer_full_steps(steps: int) -> int:
    """How many of an expert's ``steps`` run its blocks under ``taylorseer``: the warm-up, then one every
    :data:`TAYLORSEER_INTERVAL` (the schedule of diffusers' ``TaylorSeerCacheHook``; checked against the blocks'
    calls in the tests); all of them below :data:`TAYLORSEER_MIN_STEPS`. TI2V-5B at 50 steps: 27."""
    if steps < TAYLORSEER_MIN_STEPS:
        return steps
    warmup = taylorseer_warmup(steps)
    return sum(1 for k in range(steps) if k < warmup or (k - warmup - 1) % TAYLORSEER_INTERVAL == 0)


@contextlib.contextmanager
def step_cache(experts: dict[str, torch.nn.Module], approximations: Iterable[str], steps: dict[str, int]):
    """Put the step cache among ``approximations`` (if any) on every expert for one render, and take it off
    afterwards, also when the render fails. ``steps``: the denoising steps each expert runs in this render
    (:func:`wanflow.generate.expert_steps`); TaylorSeer's warm-up is counted per expert from them."""
    approximations = tuple(approximations)
    enabled = []
    try:
        for name, expert in experts.items():
            config = step_cache_config(approximations, steps.get(name, 0))
            if config is not None:
                expert.enable_cache(config)
                enabled.append(expert)
        yield
    finally:
        for expert in enabled:
            expert.disable_cache()


@contextlib.contextmanager
def uniform_timestep(pipe, enabled: bool = True):
    """For one render, give a text-to-video ``WanPipeline`` with ``expand_timesteps`` (TI2V-5B, micro-ti2v) one
    timestep per sample instead of one per token; any other pipeline, or ``enabled=False``: unchanged.

    ``expand_timesteps`` exists for image-to-video, where Wan2.2's TI2V gives the tokens of the image's latent frame
    timestep 0. In text-to-video diffusers' mask is all ones, so every token gets the same timestep and the
    transformer embeds it 27,280 times at 720p, then reads a (27,280 x 6 x 3,072) modulation in every block. One
    per sample is the same math (the transformer's own path for Wan2.1 and A14B); only the rounding differs (bf16 on
    a GPU; micro-ti2v in float32 on a CPU: frames within 2/255, tested). A compiled TI2V-5B 720p forward took 0.893 s
    instead of 0.905 s (H200, 2026-11-29, ``bench/results/exact-path-experiments.log``). Part of the exact fast
    path (:func:`wanflow.generate.run_pipeline` enables it when ``LoadOptions.fast_for`` is true).

    Args:
        pipe: a loaded diffusers pipeline. Its config's ``expand_timesteps`` is switched off in place while the
            context is open (the pipeline is the process's cached one) and switched back on when it closes, also
            when the render fails.
        enabled: False leaves ``pipe`` as it is.
    """
    from diffusers import WanPipeline

    if not (enabled and type(pipe) is WanPipeline and pipe.config.get("expand_timesteps")):
        yield
        return
    pipe.register_to_config(expand_timesteps=False)
    try:
        yield
    finally:
        pipe.register_to_config(expand_timesteps=True)


def compile_under_hooks(expert: torch.nn.Module, **compile_options) -> int:
    """Compile the ``forward`` of each of ``expert``'s repeated blocks (the classes in ``_repeated_blocks``, as
    diffusers' ``compile_repeated_blocks``), in place; returns how many blocks. Used when a step cache will be put
    on: diffusers' hooks replace a module's ``forward`` and call the one they replaced, so the cache's hooks then
    run eagerly around compiled blocks. (``compile_repeated_blocks`` compiles the module call, hooks included:
    with a cache's per-step Python state that recompiled until the 2-minute limit on one H200.) One compiled
    graph serves every block of every expert (tested with a counting backend).

    Args:
        expert: a diffusers transformer with ``_repeated_blocks``.
        compile_options: passed to ``torch.compile`` (e.g. ``fullgraph=True``, ``backend=...``).
    """
    names = set(expert._repeated_blocks)
    blocks = [module for module in expert.modules() if type(module).__name__ in names]
    for block in blocks:
        block.forward = torch.compile(block.forward, **compile_options)
    return len(blocks)


def channels_last(vae: torch.nn.Module) -> int:
    """Store ``vae``'s convolution weights channels-last (``channels_last_3d`` for ``Conv3d``, ``channels_last``
    for ``Conv2d``), in place and for good (the VAE is the process's cached one); returns how many.

    cuDNN's convolution kernels on NVIDIA GPUs work in that layout: with channels-first tensors it converts every
    input and output (``nchwToNhwc`` / ``nhwcToNchw`` kernels). A convolution with channels-last weights gives
    channels-last activations, which the elementwise layers between keep. Same math; cuDNN picks other algorithms,
    so the rounding differs. TI2V-5B 720p decode on one H200, bf16: 5.89 s -> 5.54 s, frames within 0.024 on the
    [-1, 1] scale (2026-11-29, ``bench/results/exact-path-experiments.log``). Part of the exact fast path
    (:func:`accelerate`); harmless on a CPU (tested there: the same frames within 1e-4).
    """
    count = 0
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            layout = torch.channels_last_3d if isinstance(module, torch.nn.Conv3d) else torch.channels_last
            module.weight.data = module.weight.data.contiguous(memory_format=layout)
            count += 1
    return count


def accelerate(experts: dict[str, torch.nn.Module], device: torch.device, tokens: int, compile_blocks: bool,
               approximations: Iterable[str] = (), vae: torch.nn.Module | None = None) -> dict[str, str]:
    """Apply the exact fast path and ``approximations`` to every expert (``transformer``, ``transformer_2``), in
    place. Per-expert features must reach both experts of a two-expert model (``FACTS.md`` §1). A step
    cache among ``approximations`` is put on per render (:func:`step_cache`); with one, the blocks are compiled
    beneath its hooks (:func:`compile_under_hooks`).

    Args:
        experts: the pipeline's transformers by name.
        device: where they run; on CPU (and MPS) only ``first-block-cache`` applies (attention stays PyTorch's
            default, nothing is compiled).
        tokens: sequence length of one forward (sets the shape the attention kernels are timed at).
        compile_blocks: compile the repeated transformer blocks (``torch.compile``, lazily on the first forward).
        approximations: names from :data:`wanflow.spec.APPROXIMATION_NAMES`.
        vae: the pipeline's VAE: with ``compile_blocks``, its convolution weights go channels-last
            (:func:`channels_last`) and cuDNN times its convolution algorithms once per shape.

    Returns the run tags: ``attention_backend``, ``compiled``, ``approximations``.
    """
    approximations = tuple(sorted(set(approximations)))
    check_approximations(approximations, device)
    tags = {"attention_backend": "native", "compiled": "false", "approximations": ",".join(approximations) or "none"}
    cached = bool(set(approximations) & set(STEP_CACHES))
    if device.type != "cuda":
        return tags
    first = next(iter(experts.values()))
    heads, head_dim = first.config.num_attention_heads, first.config.attention_head_dim
    if "sage-attention" in approximations:
        backend = "sage"
    else:
        backend, _ = pick_attention(device, heads, head_dim, tokens)
    if "fp8" in approximations:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        for expert in experts.values():
            quantize_(expert, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_layer)
    for expert in experts.values():
        expert.set_attention_backend(backend)
        if compile_blocks:
            use_inductor_cache()
            if cached:
                compile_under_hooks(expert, fullgraph=True)
            else:
                expert.compile_repeated_blocks(fullgraph=True)
    if compile_blocks:
        # cuDNN times its convolution algorithms once per shape: the VAE decodes 3-4% faster
        torch.backends.cudnn.benchmark = True
        if vae is not None:
            channels_last(vae)
    tags.update(attention_backend=backend, compiled=str(compile_blocks).lower())
    return tags
