"""Preset + options -> a diffusers Wan pipeline, from a local Diffusers-layout folder, the Hugging Face cache or
the Hub, with device, dtype and memory options; the loaded pipeline is kept for the next render in the process.

The same code loads real checkpoints, the tiny models (saved on the fly by :mod:`wanflow.tiny`) and the micro
models shipped in ``wanflow/micro/weights``: all three are Diffusers folders read by
``DiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from wanflow.exceptions import ModelLoadError, ModelNotFoundError
from wanflow.presets import Preset

if TYPE_CHECKING:  # diffusers is imported where a pipeline is built, so option checks stay fast
    from diffusers import DiffusionPipeline, WanImageToVideoPipeline, WanPipeline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MICRO_WEIGHTS = Path(__file__).parent / "micro" / "weights"


@dataclass(frozen=True)
class LoadOptions:
    """How a render runs (not what it renders): device, dtype and the memory flags of Wan2.2's ``generate.py``.

    Attributes:
        device: ``auto`` (cuda, then mps, then cpu), or a torch device string such as ``cpu``, ``cuda:1``.
        dtype: ``auto`` (bfloat16 on GPUs, float32 on cpu), ``float32``, ``bfloat16`` or ``float16``. Choosing
            ``bfloat16`` is the equivalent of the official ``--convert_model_dtype``.
        offload_model: keep components on the CPU and move each to the GPU while it runs
            (``enable_model_cpu_offload``; official ``--offload_model``). Slower, much less GPU memory.
        t5_cpu: run the text encoder on the CPU (official ``--t5_cpu``): saves its ~11 GB of GPU memory for UMT5-XXL.
        group_offload: stream the experts' blocks to the GPU one group at a time on a side CUDA stream
            (diffusers ``enable_group_offload``, block level, 1 block per group): the least GPU memory.
        vae_tiling: decode the video in overlapping spatial tiles (``AutoencoderKLWan.enable_tiling``): lower
            decode peak.
        fast: the exact fast path of :mod:`wanflow.acceleration` (fastest exact attention backend, regional
            compilation, one timestep per sample for TI2V text-to-video, channels-last VAE). None = on for real
            presets on CUDA, off otherwise (tiny and micro models are too small to pay back a compile); True needs
            CUDA.
        auto_memory: when none of the four memory flags above is set, a real preset on a CUDA GPU gets the
            fastest memory mode whose measured peak fits the card (:func:`plan_memory`; the run's tag
            ``memory_plan`` says which). False keeps everything on the GPU.
        model_dir: a local Diffusers-layout folder with the preset's weights (real presets).
    """

    device: str = "auto"
    dtype: str = "auto"
    offload_model: bool = False
    t5_cpu: bool = False
    group_offload: bool = False
    vae_tiling: bool = False
    fast: bool | None = None
    auto_memory: bool = True
    model_dir: str | None = None

    def torch_device(self) -> torch.device:
        """The device to compute on. Raises ValueError for an unknown or unavailable device, a device type wanflow
        does not run on (``meta``, ``xpu``, ...), an index on ``cpu`` / ``mps``, or a ``cuda:N`` past the GPU count."""
        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        allowed = "use auto, cpu, cuda, cuda:N or mps"
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device: unknown device {self.device!r}; {allowed}") from None
        if device.type not in ("cpu", "cuda", "mps") or (device.index is not None and device.type != "cuda"):
            raise ValueError(f"device: {self.device!r} is not supported; {allowed}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"device: {self.device!r} asked for, but torch sees {count} CUDA GPU"
                             f"{'s' if count > 1 else ''} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device: {self.device!r} asked for, but MPS is not available; use --device cpu")
        return device

    def torch_dtype(self) -> torch.dtype:
        """The dtype to load weights in. Raises ValueError for an unknown name."""
        if self.dtype == "auto":
            return torch.float32 if self.torch_device().type == "cpu" else torch.bfloat16
        try:
            return DTYPES[self.dtype]
        except KeyError:
            raise ValueError(f"dtype: unknown {self.dtype!r}; use auto, {', '.join(DTYPES)}") from None

    def as_tags(self) -> dict[str, str]:
        """The options, resolved, as run tags."""
        return {
            "device": str(self.torch_device()),
            "dtype": str(self.torch_dtype()).removeprefix("torch."),
            "offload_model": str(self.offload_model).lower(),
            "t5_cpu": str(self.t5_cpu).lower(),
            "group_offload": str(self.group_offload).lower(),
            "vae_tiling": str(self.vae_tiling).lower(),
        }

    def fast_for(self, preset: Preset) -> bool:
        """Whether the exact fast path runs for ``preset`` (see ``fast``)."""
        if self.fast is not None:
            return self.fast and self.torch_device().type == "cuda"
        return preset.kind == "real" and self.torch_device().type == "cuda"

    def check(self) -> None:
        """Refuse combinations that cannot run, before anything loads.

        Raises:
            ValueError: an unknown or absent device, an unknown dtype (:meth:`torch_device`, :meth:`torch_dtype`);
                ``offload_model`` with ``group_offload`` (two offload schemes on the same modules); ``fast=True`` on
                a device other than CUDA (the fast path's kernels and compile are CUDA's).
        """
        self.torch_device()
        self.torch_dtype()
        if self.offload_model and self.group_offload:
            raise ValueError("group_offload: cannot be combined with offload_model; choose one offload scheme")
        if self.fast and self.torch_device().type != "cuda":
            raise ValueError(f"fast: on needs a CUDA GPU; this render runs on {self.torch_device().type} (use auto, "
                             "which turns the fast path on where it applies, or off)")


#: Memory modes, as the LoadOptions flags they set, in the order :func:`plan_memory` tries them: the order of the
#: GPU memory they keep, which is assumed to be the order of speed. Measured time costs on one H200 (BENCHMARKS.md):
#: ``t5-cpu`` adds the text encoding on the CPU (UMT5-XXL, TI2V-5B's prompt pair: 11.2 s at their own length,
#: 20.1 s at 512 tokens; 13.3 s at 512 in the A14B run); group offload with VAE tiling made an A14B 720p step
#: 3.4% slower (25.6 s vs 24.7 s). Model offload's step time is not measured cleanly yet.
MEMORY_MODES = {
    "none": {},
    "t5-cpu": {"t5_cpu": True},
    "model-offload+vae-tiling": {"offload_model": True, "vae_tiling": True},
    "group-offload+t5-cpu+vae-tiling": {"group_offload": True, "t5_cpu": True, "vae_tiling": True},
}
#: Peak GPU memory (GiB) of a whole render at the structure's official size, per memory mode: measured on one H200
#: (``bench/run.py``, ``bench/memory.py``; BENCHMARKS.md), or derived from a measurement where the note says so.
#: TI2V-5B 1280x704x121: all on the GPU 31.9, t5-cpu 21.3, model offload + VAE tiling 14.6 (all measured).
#: A14B 1280x720x81: all on the GPU 74.1 (72.3 measured while denoising; decode adds 10.1 over the 64.0 GiB of
#: weights, measured); t5-cpu 63.5 (derived: less the 10.6 GiB text encoder); group offload + t5-cpu + VAE tiling
#: 10.2 (measured, T2V; I2V-A14B's experts are the same size, so it takes the T2V numbers).
MEASURED_PEAK_GIB = {
    "ti2v-5b": {"none": 31.9, "t5-cpu": 21.3, "model-offload+vae-tiling": 14.6},
    "t2v-a14b": {"none": 74.1, "t5-cpu": 63.5, "group-offload+t5-cpu+vae-tiling": 10.2},
    "i2v-a14b": {"none": 74.1, "t5-cpu": 63.5, "group-offload+t5-cpu+vae-tiling": 10.2},
}
#: Share of the card a plan may fill: the rest is headroom for the CUDA context, the allocator's fragmentation
#: and sizes a little off the measured ones.
MEMORY_HEADROOM = 0.92


def plan_memory(preset: Preset, card_gib: float) -> tuple[str, str]:
    """The fastest memory mode of :data:`MEMORY_MODES` whose peak (:data:`MEASURED_PEAK_GIB`, at the preset's
    official size) is at most :data:`MEMORY_HEADROOM` of ``card_gib`` (the GPU's total memory, GiB). When no
    measured mode fits, the last mode (group offload, the least memory). Returns ``(mode, why)``; ``why`` is the
    ``memory_plan`` run tag, e.g. ``model-offload+vae-tiling: measured peak 14.6 GiB <= 92% of 23.6 GiB``."""
    budget = MEMORY_HEADROOM * card_gib
    for mode, peak in MEASURED_PEAK_GIB.get(preset.structure, {}).items():
        if peak <= budget:
            return mode, f"{mode}: measured peak {peak:.1f} GiB <= {MEMORY_HEADROOM:.0%} of {card_gib:.1f} GiB"
    mode = next(reversed(MEMORY_MODES))
    return mode, f"{mode}: no measured mode fits {MEMORY_HEADROOM:.0%} of {card_gib:.1f} GiB"


def resolve_memory(options: LoadOptions, preset: Preset) -> tuple[LoadOptions, str]:
    """``options`` with :func:`plan_memory`'s flags when ``auto_memory`` applies (a real preset on CUDA, no memory
    flag set), and the ``memory_plan`` tag: the plan, or ``manual`` / ``not needed`` (tiny, micro, CPU)."""
    flags = (options.offload_model, options.t5_cpu, options.group_offload, options.vae_tiling)
    if any(flags) or not options.auto_memory:
        return options, "manual"
    device = options.torch_device()
    if device.type != "cuda" or preset.kind != "real":
        return options, "not needed"
    card = torch.cuda.get_device_properties(device).total_memory / 2**30
    mode, why = plan_memory(preset, card)
    return replace(options, **MEMORY_MODES[mode]), f"auto {why}"


@dataclass(frozen=True)
class ModelSource:
    """Where a preset's weights were found: the folder, and a revision string for the run's tags."""

    path: Path
    origin: Literal["local", "hub-cache", "hub", "tiny", "micro", "random"]
    revision: str


def _check_complete(path: Path) -> None:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelNotFoundError(f"model_dir: {path} has no model_index.json; it is not a Diffusers-layout model folder")
    index = json.loads(index_file.read_text())
    missing = [
        name for name, value in index.items()
        if isinstance(value, list) and value[0] is not None and not (path / name).is_dir()
    ]
    if missing:
        raise ModelNotFoundError(
            f"model_dir: {path} is incomplete: missing component folder(s) {', '.join(missing)}; "
            "download the whole repository again"
        )
    for name, value in index.items():
        if isinstance(value, list) and value[0] is not None:
            _check_weights(path / name)


#: Weights files diffusers and transformers read (safetensors first; ``.bin`` for old checkpoints).
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _check_weights(folder: Path) -> None:
    """A model component (a folder with ``config.json``) has its weights, every shard its index lists, and every
    ``.safetensors`` file is whole: its header parses and the file is as long as the header says. Reads headers
    only (kilobytes, also for 14B checkpoints); a file whose tensor bytes are garbled but whole is not caught.

    Raises:
        ModelNotFoundError: no weights file, or a shard listed in an index is missing.
        ModelLoadError: a truncated or corrupt ``.safetensors`` file (the message names it).
    """
    if not (folder / "config.json").is_file():
        return  # a tokenizer or scheduler: no weights
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelLoadError(f"model_dir: {index} is not a weights index (no weight_map); download it again") from None
        absent = sorted(name for name in shards if not (folder / name).is_file())
        if absent:
            raise ModelNotFoundError(f"model_dir: {folder} is incomplete: {index.name} lists missing shard(s) "
                                     f"{', '.join(absent)}; download the whole repository again")
    if not weights:
        raise ModelNotFoundError(f"model_dir: {folder} has a config.json but no weights file (*.safetensors or "
                                 "*.bin); download the whole repository again")
    for file in weights:
        problem = _safetensors_problem(file) if file.suffix == ".safetensors" else None
        if problem:
            raise ModelLoadError(f"model_dir: {file} {problem}; download it again")


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file's framing (8-byte header length, JSON header, data length), or None."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is empty or truncated ({size} bytes, no header)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"has a corrupt or truncated header (says {length} bytes, the file has {size})"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError):
            return "has a corrupt header (not JSON)"
    if not isinstance(header, dict):
        return "has a corrupt header (not a JSON object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "has a corrupt header (no data_offsets)"
    if 8 + length + end > size:
        return f"is truncated ({size} bytes; its header describes {8 + length + end})"
    return None


def find_model(preset: Preset, model_dir: str | os.PathLike | None = None) -> ModelSource:
    """Locate ``preset``'s weights.

    Real presets are looked for, in order: ``model_dir``; ``$WANFLOW_MODEL_DIR/<repo name>`` (e.g.
    ``~/models/Wan2.2-TI2V-5B-Diffusers``); the Hugging Face cache; the Hub itself unless ``HF_HUB_OFFLINE=1``.
    Tiny presets are built and saved on first use; micro presets ship in ``wanflow/micro/weights``.

    Raises:
        ModelNotFoundError: not found (the message lists where it looked and the download command), or the
            folder lacks ``model_index.json``, a component folder or a weights file.
        ModelLoadError: a truncated or corrupt ``.safetensors`` file (checked from its header; cheap).
    """
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"model_dir: {path} does not exist or is not a folder")
        _check_complete(path)
        return ModelSource(path, "local", "local")
    if preset.kind == "tiny":
        from wanflow import tiny

        return ModelSource(tiny.materialize(preset), "tiny", f"tiny-v{tiny.TINY_FORMAT}")
    if preset.kind == "micro":
        path = MICRO_WEIGHTS / preset.name
        _check_complete(path)
        return ModelSource(path, "micro", (path / "VERSION").read_text().strip() if (path / "VERSION").exists() else "micro")

    looked = []
    repo_name = preset.hub_id.split("/")[-1]
    if os.environ.get("WANFLOW_MODEL_DIR"):
        path = Path(os.environ["WANFLOW_MODEL_DIR"]).expanduser() / repo_name
        if path.is_dir():
            _check_complete(path)
            return ModelSource(path, "local", "local")
        looked.append(f"$WANFLOW_MODEL_DIR/{repo_name} ({path})")
    else:
        looked.append("$WANFLOW_MODEL_DIR (not set)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(preset.hub_id, local_files_only=True))
        _check_complete(path)
        return ModelSource(path, "hub-cache", path.name)
    except (LocalEntryNotFoundError, FileNotFoundError, ModelNotFoundError):
        looked.append(f"the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        try:
            path = Path(snapshot_download(preset.hub_id))
            return ModelSource(path, "hub", path.name)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
            looked.append(f"the Hub ({preset.hub_id}: {err.__class__.__name__})")
    else:
        looked.append("the Hub (skipped: HF_HUB_OFFLINE is set)")
    raise ModelNotFoundError(
        f"preset: {preset.name}'s weights for {preset.hub_id} not found. Looked in: " + "; ".join(looked) + ". "
        f"Get them with `hf download {preset.hub_id} --local-dir ~/models/{repo_name}` and pass "
        f"`--model-dir ~/models/{repo_name}` (or set WANFLOW_MODEL_DIR=~/models)."
    )


@dataclass
class LoadedPipeline:
    """A ready pipeline and how it came to be."""

    pipe: "WanPipeline | WanImageToVideoPipeline"
    source: ModelSource
    options: LoadOptions
    load_seconds: float
    from_cache: bool
    #: Run tags from :func:`wanflow.acceleration.accelerate`: attention backend, compiled, approximations.
    acceleration: dict = field(default_factory=dict)


@dataclass
class _Cache:
    key: tuple | None = None
    source: ModelSource | None = None
    pipes: dict = field(default_factory=dict)
    acceleration: dict = field(default_factory=dict)


_cache = _Cache()


def clear_cache() -> None:
    """Drop the kept pipeline (frees its memory once nothing else holds it)."""
    _cache.key, _cache.source, _cache.pipes, _cache.acceleration = None, None, {}, {}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _place(pipe: "DiffusionPipeline", options: LoadOptions) -> None:
    device = options.torch_device()
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.group_offload and device.type != "cpu":
        # the experts stream block by block; the text encoder and VAE go to the GPU whole unless t5_cpu
        for name, module in pipe.components.items():
            if name.startswith("transformer") and module is not None:
                module.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1,
                                            use_stream=True)
        pipe.vae.to(device)
        pipe.text_encoder.to("cpu" if options.t5_cpu else device)
        return
    if options.offload_model and device.type != "cpu":
        if options.t5_cpu:
            pipe._exclude_from_cpu_offload = [*pipe._exclude_from_cpu_offload, "text_encoder"]
        pipe.enable_model_cpu_offload(device=device)
        if options.t5_cpu:
            pipe.text_encoder.to("cpu")
        return
    pipe.to(device)
    if options.t5_cpu:
        pipe.text_encoder.to("cpu")


def _share(cls, base: "DiffusionPipeline") -> "DiffusionPipeline":
    """A ``cls`` pipeline over ``base``'s modules and config. Not ``from_pipe``: it ends with ``.to(dtype)``
    (float32 unless told), which would cast the shared bfloat16 weights in place (and the modules diffusers keeps
    in float32 with them)."""
    expected, optional = cls._get_signature_keys(cls)
    kwargs = {name: base.components[name] for name in expected if name in base.components}
    kwargs.update({name: base.config[name] for name in optional if name in base.config})
    pipe = cls(**kwargs)
    pipe._exclude_from_cpu_offload = list(getattr(base, "_exclude_from_cpu_offload", []))
    return pipe


def load_pipeline(preset: Preset, task: Literal["t2v", "i2v", "v2v"], options: LoadOptions | None = None,
                  approximations: tuple[str, ...] = ()) -> LoadedPipeline:
    """The pipeline for ``preset`` and ``task``: ``WanPipeline`` for text-to-video, ``WanImageToVideoPipeline``
    for image-to-video (TI2V-5B's one set of weights serves both, sharing the modules), ``WanVideoToVideoPipeline``
    for video-to-video on the text-to-video A14B structure (its experts behind a
    :class:`wanflow.video2video.ExpertRouter`).

    The last loaded model stays in memory: a second call with the same preset and options (only the prompt or seed
    changed) returns it without reloading (``from_cache=True``, ``load_seconds`` ~0). ``approximations`` (names
    from :data:`wanflow.spec.APPROXIMATION_NAMES`) change the weights or hooks, so a different set reloads.

    Raises:
        ModelNotFoundError, ModelLoadError: see :func:`find_model`; ModelLoadError also when diffusers cannot read
            a weights file (the message starts with ``model_dir:`` and carries diffusers', which names the file).
        ValueError: bad device or dtype; the folder holds a different pipeline than the preset needs.
    """
    from diffusers import DiffusionPipeline, WanImageToVideoPipeline, WanPipeline

    from wanflow.acceleration import accelerate, check_approximations

    options = options or LoadOptions()
    options.check()
    options, _ = resolve_memory(options, preset)
    device, dtype = options.torch_device(), options.torch_dtype()
    check_approximations(approximations, device, dtype)
    started = time.perf_counter()
    source = find_model(preset, options.model_dir)
    key = (str(source.path), str(device), str(dtype), options.offload_model, options.t5_cpu, options.group_offload,
           options.vae_tiling, options.fast_for(preset), tuple(sorted(approximations)))
    if _cache.key == key and task in _cache.pipes:
        return LoadedPipeline(_cache.pipes[task], source, options, time.perf_counter() - started, True,
                              _cache.acceleration)
    if _cache.key != key:
        clear_cache()
        try:
            base = DiffusionPipeline.from_pretrained(source.path, dtype=dtype)
        except OSError as err:  # diffusers: "Unable to load weights from checkpoint file for '<file>' ..."
            raise ModelLoadError(f"model_dir: cannot load {source.path}: {str(err).strip()} Download the "
                                 "file(s) again.") from err
        expected = WanImageToVideoPipeline if preset.structure == "i2v-a14b" else WanPipeline
        if not isinstance(base, expected):
            raise ValueError(
                f"model_dir: {source.path} holds a {type(base).__name__}; preset {preset.name} needs a "
                f"{expected.__name__} checkpoint ({preset.hub_id or preset.structure})"
            )
        if bool(base.config.boundary_ratio) != preset.two_experts:
            raise ValueError(
                f"model_dir: {source.path} has boundary_ratio={base.config.boundary_ratio}; preset {preset.name} "
                f"expects {preset.boundary_ratio}"
            )
        base.set_progress_bar_config(disable=True)
        _place(base, options)
        experts = {name: base.components[name] for name in ("transformer", "transformer_2") if base.components.get(name)}
        _cache.acceleration = accelerate(experts, device, preset.tokens(), options.fast_for(preset), approximations,
                                         vae=base.vae)
        _cache.key, _cache.source = key, source
        _cache.pipes = {"i2v" if isinstance(base, WanImageToVideoPipeline) else "t2v": base}
    if task not in _cache.pipes:
        other = next(iter(_cache.pipes.values()))
        if task == "v2v":
            from wanflow.video2video import build_pipeline as build_video2video

            pipe = build_video2video(_cache.pipes.get("t2v", other))
        else:
            pipe = _share(WanImageToVideoPipeline if task == "i2v" else WanPipeline, other)
        pipe.set_progress_bar_config(disable=True)
        _cache.pipes[task] = pipe
    return LoadedPipeline(_cache.pipes[task], source, options, time.perf_counter() - started, False,
                          _cache.acceleration)
