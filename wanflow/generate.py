"""RenderSpec -> frames: runs a diffusers Wan pipeline with every setting passed explicitly, and observes it.

What it observes while the pipeline runs: time per stage (load, text encode, denoise, decode), peak memory, and
which expert ran at each denoising step (forward hooks on ``transformer`` / ``transformer_2``, not assumed from the
boundary). It knows nothing about files or MLflow (:mod:`wanflow.rendering` puts the pieces together).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from wanflow.acceleration import step_cache, taylorseer_full_steps, uniform_timestep
from wanflow.loading import LoadedPipeline, LoadOptions, ModelSource, load_pipeline
from wanflow.micro.vocabulary import BACKGROUND_COLOURS, MOTION_PHRASES, OBJECT_COLOURS, SHAPES
from wanflow.spec import RenderSpec
from wanflow.text import MAX_SEQUENCE_LENGTH, unknown_words
from wanflow.video2video import Guidance, experts_of, input_frames


@dataclass(frozen=True)
class StepEvent:
    """One finished denoising step, as passed to ``on_step`` callbacks.

    ``step`` counts from 0; ``timestep`` is on the scheduler's 0..1000 scale; ``expert`` is the transformer
    that ran (``transformer`` = high noise, ``transformer_2`` = low noise); ``guidance_scale`` the CFG scale used.
    """

    step: int
    total: int
    timestep: float
    expert: str
    guidance_scale: float


@dataclass
class Generation:
    """What :func:`generate` returns: uint8 frames (F, H, W, 3), the seed, seconds per stage
    (``load``, ``text_encode``, ``denoise``, ``decode``: the VAE and the uint8 frames), the steps with their expert, and
    peak memory in GiB (``memory_kind``: ``cuda`` = peak allocated on the GPU, ``cpu-rss`` = the process's peak
    resident set)."""

    frames: np.ndarray
    seed: int
    timings: dict[str, float]
    steps: list[StepEvent]
    peak_memory_gib: float
    memory_kind: str
    source: ModelSource
    options: LoadOptions
    pipeline_class: str
    scheduler: dict = field(default_factory=dict)
    #: Tokens of the prompt (with ``</s>``); the text encoder reads at most :data:`MAX_SEQUENCE_LENGTH`.
    prompt_tokens: int = 0
    #: How the denoiser ran: ``attention_backend``, ``compiled``, ``approximations`` (:mod:`wanflow.acceleration`),
    #: and under ``taylorseer`` ``taylorseer_full_steps``: the steps that ran the blocks, per expert (``9/16``).
    acceleration: dict = field(default_factory=dict)

    @property
    def frames_sha256(self) -> str:
        """SHA-256 of the uint8 frames and their shape: equal hashes, bit-identical videos."""
        import hashlib

        digest = hashlib.sha256(str(self.frames.shape).encode())
        digest.update(np.ascontiguousarray(self.frames).tobytes())
        return digest.hexdigest()

    @property
    def expert_schedule(self) -> str:
        """Runs of experts over the steps, e.g. ``transformer:0-4,transformer_2:5-9``."""
        runs: list[list] = []
        for event in self.steps:
            if runs and runs[-1][0] == event.expert:
                runs[-1][2] = event.step
            else:
                runs.append([event.expert, event.step, event.step])
        return ",".join(f"{name}:{a}-{b}" for name, a, b in runs)


def _set_flow_shift(pipe, flow_shift: float) -> None:
    """Replace the scheduler by the same class with ``flow_shift`` (UniPC: ``flow_shift``; flow-match Euler:
    ``shift``). The Diffusers conversions of A14B bake 3.0 into their config (``FACTS.md`` §1)."""
    config = dict(pipe.scheduler.config)
    key = "flow_shift" if "flow_shift" in config else "shift"
    if config.get(key) != flow_shift:
        pipe.scheduler = type(pipe.scheduler).from_config(config, **{key: flow_shift})


def encode_text(pipe, prompt: str, negative_prompt: str | None, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UMT5 embeddings of ``prompt`` and (when not None) ``negative_prompt``, each (1, 512, text width), encoded on
    ``device`` with the pipeline's own ``encode_prompt``: the values diffusers passes to the transformer.

    Wan pads every text to 512 tokens (``text_len`` in ``wan/configs/shared_config.py``), encodes all 512, then
    keeps each text's own tokens and sets the rest to zero. The encoder masks the padding out of self-attention and
    T5's position bias is relative, so the real tokens' outputs do not depend on the padding: here the encoder reads
    only as many tokens as the longer text has, and the zeros are added after. Same values up to kernel rounding
    (tested on the micro models), at a fraction of the cost: UMT5-XXL on the CPU (``--t5-cpu``, 32-core host) took
    20.1 s for a prompt and negative prompt at 512 tokens, 11.2 s at 128 (BENCHMARKS.md, Memory modes).
    """
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    texts = [prompt] + ([negative_prompt] if negative_prompt is not None else [])
    length = min(MAX_SEQUENCE_LENGTH, max(len(pipe.tokenizer(prompt_clean(t)).input_ids) for t in texts))
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                                              do_classifier_free_guidance=negative_prompt is not None,
                                              max_sequence_length=length, device=device)

    def padded(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.nn.functional.pad(x, (0, 0, 0, MAX_SEQUENCE_LENGTH - x.shape[1]))

    return padded(embeds), padded(negative)


def expert_steps(pipe, spec: RenderSpec) -> dict[str, int]:
    """How many denoising steps each expert (``transformer``, ``transformer_2``) runs in a render of ``spec`` on
    ``pipe``, from a copy of its scheduler: the timesteps at or above the boundary go to ``transformer``, as in
    diffusers' Wan pipelines; a video-to-video render runs the last ``strength`` of them. One-expert models: all
    steps are ``transformer``'s."""
    import copy

    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(spec.num_inference_steps, device="cpu")
    timesteps = scheduler.timesteps
    if spec.task == "v2v":
        timesteps, _ = pipe.get_timesteps(spec.num_inference_steps, timesteps, spec.strength, "cpu")
    experts = experts_of(pipe)
    holder = pipe.transformer if spec.task == "v2v" else None
    if holder is not None:
        boundary = holder.boundary_timestep
    else:
        ratio = pipe.config.get("boundary_ratio")
        boundary = ratio * scheduler.config.num_train_timesteps if ratio else None
    if boundary is None or "transformer_2" not in experts:
        return {"transformer": len(timesteps)}
    high = int((timesteps >= boundary).sum())
    return {"transformer": high, "transformer_2": len(timesteps) - high}


#: Frames converted to uint8 at a time by :func:`uint8_frames` (TI2V-5B 720p: 16 x 3 x 704 x 1280 float32 = 173 MB).
UINT8_CHUNK = 16


def uint8_frames(video: torch.Tensor) -> np.ndarray:
    """diffusers' ``output_type="pt"`` video, a float tensor (1, F, 3, H, W) with values in [0, 1] on the render's
    device, as uint8 frames (F, H, W, 3) on the CPU.

    Converted where the video is, :data:`UINT8_CHUNK` frames at a time, with the arithmetic of
    :func:`wanflow.media.to_uint8` on the ``"np"`` output (float32, clip to [0, 1], x 255, round half to even): the
    same values (tested on the CPU). Every render makes its frames this way, on any device. For TI2V-5B 720p (121
    frames of 1280 x 704) on an H200 host it took 0.27 s against 2.95 s for the ``"np"`` output and ``to_uint8`` on
    the host's CPU (2026-11-29, ``bench/results/exact-path-experiments.log``).

    Raises:
        ValueError: not a floating-point torch tensor of shape (1, F >= 1, 3, H, W).
    """
    if not isinstance(video, torch.Tensor) or not video.is_floating_point():
        raise ValueError(f"video: expected a floating-point torch tensor, got {type(video).__name__}"
                         f"{f' of {video.dtype}' if isinstance(video, torch.Tensor) else ''}")
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] < 1 or video.shape[2] != 3:
        raise ValueError(f"video: expected shape (1, F >= 1, 3, H, W), got {tuple(video.shape)}")
    video = video[0]
    frames = torch.empty((video.shape[0], video.shape[2], video.shape[3], 3), dtype=torch.uint8)
    for start in range(0, video.shape[0], UINT8_CHUNK):
        chunk = video[start:start + UINT8_CHUNK].float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        frames[start:start + UINT8_CHUNK] = chunk.permute(0, 2, 3, 1).cpu()
    return frames.numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kib / (2**30 if sys.platform == "darwin" else 2**20), "cpu-rss"


def generate(
    spec: RenderSpec,
    options: LoadOptions | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    progress: bool = True,
) -> Generation:
    """Render ``spec`` to frames.

    Args:
        spec: the validated inputs.
        options: device, dtype and memory options (default: automatic).
        on_step: called after every denoising step with a :class:`StepEvent` (the notebook studio's progress bar).
        progress: show a tqdm bar over denoising steps.

    Noise comes from a CPU ``torch.Generator`` seeded with ``spec.seed`` (diffusers' advice for reproducible
    noise across devices). CFG runs only when ``guidance_scale > 1`` (as in diffusers). Video-to-video
    (``spec.video``) runs ``spec.denoising_steps`` steps through :mod:`wanflow.video2video`, which routes each step
    to the expert of its timestep and runs CFG there.

    Raises:
        ModelNotFoundError, ValueError: from :func:`wanflow.loading.load_pipeline`.
    """
    options = options or LoadOptions()
    loaded = load_pipeline(spec.model, spec.task, options, spec.approximations)
    return run_pipeline(loaded, spec, on_step=on_step, progress=progress)


def run_pipeline(
    loaded: LoadedPipeline,
    spec: RenderSpec,
    on_step: Callable[[StepEvent], None] | None = None,
    progress: bool = True,
) -> Generation:
    """Render ``spec`` on an already loaded pipeline (what :func:`generate` does after loading). The benchmark
    (``bench/``) calls it with full-size random-weight pipelines it builds itself; arguments as :func:`generate`."""
    options = loaded.options
    preset = spec.model
    pipe = loaded.pipe
    _set_flow_shift(pipe, spec.flow_shift)
    device = pipe._execution_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timings = {"load": loaded.load_seconds}
    do_cfg = spec.guidance_scale > 1.0
    text_device = torch.device("cpu") if options.t5_cpu else device
    prompt_tokens = len(pipe.tokenizer(spec.prompt, add_special_tokens=True).input_ids)
    if prompt_tokens > MAX_SEQUENCE_LENGTH:
        warnings.warn(
            f"prompt: {prompt_tokens} tokens; the text encoder reads the first {MAX_SEQUENCE_LENGTH} and ignores the "
            "rest (recorded on the run as prompt_truncated=true)", stacklevel=2,
        )
    if preset.kind == "micro":  # trained on template captions: an unknown word is read as <unk>, i.e. ignored
        unknown = unknown_words(pipe.tokenizer, spec.prompt)
        if unknown:
            warnings.warn(
                f"prompt: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''} not in the vocabulary of "
                f"{preset.name} (read as unknown); it draws {' / '.join(OBJECT_COLOURS)} {' / '.join(SHAPES)} "
                f"{' / '.join(MOTION_PHRASES.values())} on a {' / '.join(BACKGROUND_COLOURS)} background",
                stacklevel=2,
            )
    started = time.perf_counter()
    prompt_embeds, negative_embeds = encode_text(pipe, spec.prompt, (spec.negative_prompt or "") if do_cfg else None,
                                                 text_device)
    prompt_embeds = prompt_embeds.to(device)
    negative_embeds = negative_embeds.to(device) if negative_embeds is not None else None
    _sync(device)
    timings["text_encode"] = time.perf_counter() - started

    ran: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
        for name, module in experts_of(pipe).items()
    ]
    raw_steps: list[tuple[int, torch.Tensor, str]] = []
    total = spec.denoising_steps
    bar = tqdm(total=total, desc=f"{spec.preset} denoise", unit="step", disable=not progress,
               leave=False, file=sys.stderr)
    marks = {"denoise_end": None}

    def event(i: int, t, expert: str) -> StepEvent:
        """A step as observed: the expert the hooks saw, and the guidance scale that expert runs with."""
        scale = spec.guidance_scale_2 if expert == "transformer_2" else spec.guidance_scale
        return StepEvent(i, total, float(t), expert, scale)

    def on_step_end(_pipe, i, t, callback_kwargs):
        expert = ran[-1] if ran else "none"
        ran.clear()
        raw_steps.append((i, t, expert))
        bar.update(1)
        if i == total - 1:
            _sync(device)
            marks["denoise_end"] = time.perf_counter()
        if on_step is not None:
            on_step(event(i, t, expert))
        return {}

    call = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        height=spec.height,
        width=spec.width,
        num_frames=spec.num_frames,
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(spec.seed),
        output_type="pt",  # frames to uint8 on the render's device (uint8_frames)
        callback_on_step_end=on_step_end,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    guided = contextlib.nullcontext()
    if spec.task == "v2v":
        # WanVideoToVideoPipeline knows one transformer: its router picks the expert and runs CFG (video2video.py)
        del call["num_frames"], call["negative_prompt_embeds"]
        call.update(video=input_frames(spec.video, spec.num_frames, spec.width, spec.height),
                    strength=spec.strength, guidance_scale=1.0)
        guided = pipe.transformer.guide(Guidance(negative_embeds, spec.guidance_scale,
                                                 spec.guidance_scale if spec.guidance_scale_2 is None
                                                 else spec.guidance_scale_2))
    elif preset.two_experts:
        call["guidance_scale_2"] = spec.guidance_scale_2
    if spec.task == "i2v":
        with Image.open(spec.image) as img:
            call["image"] = img.convert("RGB")
    steps_by_expert = expert_steps(pipe, spec)
    acceleration = dict(loaded.acceleration)
    if "taylorseer" in spec.approximations:  # fixed in advance: "transformer:14/26,transformer_2:8/14"
        acceleration["taylorseer_full_steps"] = ",".join(f"{name}:{taylorseer_full_steps(n)}/{n}"
                                                         for name, n in steps_by_expert.items())
    started = time.perf_counter()
    try:
        with (guided, uniform_timestep(pipe, options.fast_for(preset)),
              step_cache(experts_of(pipe), spec.approximations, steps_by_expert)):
            output = pipe(**call)
        frames = uint8_frames(output.frames)
    finally:
        bar.close()
        for hook in hooks:
            hook.remove()
    ended = time.perf_counter()
    denoise_end = marks["denoise_end"] or ended
    timings["denoise"] = denoise_end - started
    timings["decode"] = ended - denoise_end

    steps = [event(i, t, expert) for i, t, expert in raw_steps]  # timesteps read after the loop: no syncs in it
    peak, kind = _peak_memory(device)
    return Generation(
        frames=frames,
        seed=spec.seed,
        timings=timings,
        steps=steps,
        peak_memory_gib=peak,
        memory_kind=kind,
        source=loaded.source,
        options=options,
        pipeline_class=type(pipe).__name__,
        scheduler={"class": type(pipe.scheduler).__name__, **dict(pipe.scheduler.config)},
        prompt_tokens=prompt_tokens,
        acceleration=acceleration,
    )
