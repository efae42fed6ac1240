"""RenderSpec: every input of one render, validated against its preset, as canonical JSON with a content hash.

A spec is complete once built: settings the user leaves out are filled from the preset's official values and a
missing seed is drawn at random, so the saved ``spec.json`` of a render renders the same video again (on the same
machine, torch version and dtype; see README "Determinism"). How the render runs (device, dtype, offload) is not
part of the spec: see :class:`wanflow.loading.LoadOptions`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wanflow.presets import Preset, UnknownPresetError, get_preset

#: Seeds are unsigned 32-bit, as numpy's and most UIs'; torch accepts them on every device.
MAX_SEED = 2**32 - 1

#: Bounds that catch typos before a model loads; generous beyond every official setting.
LIMITS = {
    "num_inference_steps": (1, 1000),
    "guidance_scale": (0.0, 50.0),
    "guidance_scale_2": (0.0, 50.0),
    "flow_shift": (0.01, 100.0),
    "width": (16, 4096),
    "height": (16, 4096),
    "num_frames": (1, 1025),
    "fps": (1, 120),
}

#: Video-to-video strength when a spec gives ``video`` but no ``strength``: diffusers' ``WanVideoToVideoPipeline``
#: default.
DEFAULT_STRENGTH = 0.8
#: Fields added after version 1 are left out of the canonical JSON while unset, so older specs keep their ids.
_OPTIONAL_FIELDS = ("video", "video_sha256", "strength", "approximations")


class Adapter(BaseModel):
    """A LoRA adapter to apply to the experts (room for later; rendering with adapters is not implemented yet).

    ``target`` names the experts it goes into: on two-expert models per-expert features must reach both
    ``transformer`` and ``transformer_2`` (``shared/RESEARCH.md`` §1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    weight: float = 1.0
    target: Literal["both", "transformer", "transformer_2"] = "both"


class RenderSpec(BaseModel):
    """Every input of one render.

    Fields left as None are filled from the preset (``wanflow models`` lists them); ``seed=None`` draws a random
    seed, stored in the spec. Pixel sizes are ``width`` x ``height``; ``num_frames`` counts output frames and must
    be 4k+1 (the VAE compresses time 4x: latent frames = (num_frames - 1) // 4 + 1); ``fps`` is the mp4's frame
    rate. ``image`` is a path to the first frame for image-to-video; its SHA-256 is recorded in ``image_sha256``.
    ``video`` is a path to an input video for video-to-video (SHA-256 in ``video_sha256``), re-noised to
    ``strength`` (0 < strength <= 1; the first ``1 - strength`` of the denoising steps are skipped); its frames
    are picked evenly to ``num_frames`` and resized to ``width`` x ``height`` (:func:`wanflow.video2video.input_frames`).

    Raises:
        pydantic.ValidationError (a ValueError): one line per bad field, ``field: what is wrong; what is
            allowed``, e.g. ``height: 720 must be a multiple of 32 on ti2v-5b; 704 is the official size``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    preset: str
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    image: str | None = None
    image_sha256: str | None = None
    video: str | None = None
    video_sha256: str | None = None
    strength: float | None = None
    adapters: tuple[Adapter, ...] = Field(default=())
    #: Opt-in speed-ups that change the frames (see :mod:`wanflow.acceleration`); empty = exact.
    approximations: tuple[Literal["first-block-cache", "fp8", "sage-attention"], ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("preset")
        if not isinstance(name, str):
            raise ValueError("preset: required, the name of a model preset (see `wanflow models`)")
        try:
            preset = get_preset(name)
        except UnknownPresetError as err:
            raise ValueError(str(err)) from None
        defaults = {
            "negative_prompt": preset.negative_prompt,
            "num_inference_steps": preset.num_inference_steps,
            "guidance_scale": preset.guidance_scale,
            "guidance_scale_2": preset.guidance_scale_2,
            "flow_shift": preset.flow_shift,
            "width": preset.width,
            "height": preset.height,
            "num_frames": preset.num_frames,
            "fps": preset.fps,
        }
        for key, value in defaults.items():
            if data.get(key) is None:
                data[key] = value
        if data.get("seed") is None:
            data["seed"] = secrets.randbelow(MAX_SEED + 1)
        for key in ("image", "video"):  # absolute, so a saved spec works from any folder
            if isinstance(data.get(key), (str, os.PathLike)) and os.fspath(data[key]):
                data[key] = os.path.abspath(os.path.expanduser(os.fspath(data[key])))
        if data.get("video") is not None and data.get("strength") is None:
            data["strength"] = DEFAULT_STRENGTH
        if isinstance(data.get("approximations"), str):  # "fp8,first-block-cache" from a CLI or a param
            data["approximations"] = [name for name in data["approximations"].split(",") if name.strip()]
        if isinstance(data.get("approximations"), (list, tuple)):  # a set: order and repeats do not matter
            data["approximations"] = tuple(sorted({str(name).strip() for name in data["approximations"]}))
        return data

    @model_validator(mode="after")
    def _check_against_preset(self) -> "RenderSpec":
        preset = self.model
        problems = _problems(self, preset)
        if problems:
            raise ValueError("\n".join(f"{field}: {message}" for field, message in problems))
        for field in ("image", "video"):
            path = getattr(self, field)
            if path is None:
                continue
            digest, recorded = _sha256(Path(path)), getattr(self, f"{field}_sha256")
            if recorded is not None and recorded != digest:
                raise ValueError(
                    f"{field}: {path} changed since this spec was made (sha256 {digest[:12]}..., "
                    f"spec says {recorded[:12]}...); use the original {field} or drop {field}_sha256"
                )
            object.__setattr__(self, f"{field}_sha256", digest)
        return self

    @property
    def model(self) -> Preset:
        """The preset this spec renders with."""
        return get_preset(self.preset)

    @property
    def task(self) -> Literal["t2v", "i2v", "v2v"]:
        """``i2v`` when an input image is given, ``v2v`` when an input video is given, else ``t2v``."""
        if self.video is not None:
            return "v2v"
        return "i2v" if self.image is not None else "t2v"

    @property
    def denoising_steps(self) -> int:
        """Denoising steps that run: ``num_inference_steps``, or for video-to-video the last
        ``int(num_inference_steps * strength)`` of them (the rule of diffusers'
        ``WanVideoToVideoPipeline.get_timesteps``, which skips the first, noisiest steps)."""
        if self.video is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def canonical_json(self) -> str:
        """The spec as JSON with sorted keys and no whitespace: the form that is hashed and stored. Fields added
        after version 1 (``video``, ``video_sha256``, ``strength``, ``approximations``) are left out while unset."""
        data = self.model_dump(mode="json")
        for key in _OPTIONAL_FIELDS:
            if data[key] is None or data[key] == []:
                del data[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def spec_id(self) -> str:
        """First 16 hex digits of the SHA-256 of :meth:`canonical_json`: equal specs, equal ids."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]

    def to_params(self) -> dict[str, str]:
        """Every field as an MLflow param value (strings; None as empty; adapters as JSON)."""
        out = {}
        for key, value in self.model_dump(mode="json").items():
            if key == "adapters":
                out[key] = json.dumps(value, ensure_ascii=False)
            elif key == "approximations":
                out[key] = ",".join(value) or "none"
            else:
                out[key] = "" if value is None else str(value)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as indented JSON, atomically (temp file, then rename). Returns the path."""
        from wanflow.media import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RenderSpec":
        """Read a spec written by :meth:`save` (e.g. a render's ``spec.json``).

        Raises:
            FileNotFoundError: no file at ``path``.
            pydantic.ValidationError: the file is not a valid spec (the message names the field).
        """
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _nearest(value: int, allowed: list[int]) -> int:
    return min(allowed, key=lambda a: (abs(a - value), a))


def _problems(spec: RenderSpec, preset: Preset) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not spec.prompt.strip():
        problems.append(("prompt", "must not be empty or only whitespace"))
    if not 0 <= spec.seed <= MAX_SEED:
        problems.append(("seed", f"{spec.seed} is out of range; use an integer from 0 to {MAX_SEED}"))
    for field, (low, high) in LIMITS.items():
        value = getattr(spec, field)
        if value is not None and not low <= value <= high:
            problems.append((field, f"{value} is out of range; allowed {low}..{high}"))
    if spec.guidance_scale_2 is not None and not preset.two_experts:
        problems.append((
            "guidance_scale_2",
            f"only for two-expert presets (t2v-a14b, i2v-a14b, ...); {preset.name} has one transformer, "
            "use guidance_scale",
        ))
    for field, index in (("width", 0), ("height", 1)):
        value = getattr(spec, field)
        if value % preset.size_multiple:
            official = sorted({size[index] for size in preset.sizes})
            problems.append((
                field,
                f"{value} must be a multiple of {preset.size_multiple} on {preset.name}; "
                f"{_nearest(value, official)} is the official size",
            ))
    if (spec.num_frames - 1) % 4:
        low = (spec.num_frames - 1) // 4 * 4 + 1
        problems.append(("num_frames", f"{spec.num_frames} must be 4k+1 (e.g. {low} or {low + 4}); "
                                       f"{preset.name}'s official value is {preset.num_frames}"))
    if spec.image is None and spec.video is None and "t2v" not in preset.tasks:
        problems.append(("image", f"{preset.name} is image-to-video only: give an input image"))
    if spec.image is not None:
        if "i2v" not in preset.tasks:
            problems.append(("image", f"{preset.name} is text-to-video only; image-to-video presets: "
                                      "ti2v-5b, i2v-a14b and their tiny/micro analogues"))
        else:
            problem = _image_problem(Path(spec.image))
            if problem:
                problems.append(("image", problem))
    problems.extend(_video_problems(spec, preset))
    if spec.adapters:
        problems.append(("adapters", "rendering with adapters is not supported yet; leave the list empty"))
    return problems


def _video_problems(spec: RenderSpec, preset: Preset) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if spec.video is None:
        if spec.strength is not None:
            problems.append(("strength", "only for video-to-video; give an input video, or leave strength unset"))
        return problems
    if spec.image is not None:
        problems.append(("video", "give an input image or an input video, not both"))
    if preset.structure != "t2v-a14b":
        problems.append(("video", f"video-to-video runs on text-to-video A14B-structure presets (t2v-a14b, "
                                  f"tiny-t2v-a14b, micro-a14b); {preset.name} is {preset.structure}"))
    path = Path(spec.video)
    if not path.is_file():
        problems.append(("video", f"{path} does not exist or is not a file"))
    if not 0.0 < spec.strength <= 1.0:
        problems.append(("strength", f"{spec.strength} is out of range; allowed 0 < strength <= 1"))
    elif spec.denoising_steps < 1:
        least = 1 / spec.num_inference_steps
        problems.append(("strength", f"{spec.strength} with {spec.num_inference_steps} steps runs no denoising "
                                     f"step (int(steps x strength) = 0); use at least {least:.3g}"))
    return problems


def _image_problem(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file"
    try:
        with Image.open(path) as img:
            img.verify()
    except PermissionError:
        return f"{path} is not readable (permission denied)"
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"{path} is not an image PIL can read ({err.__class__.__name__}); use PNG, JPEG or WebP"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def explain(error: Exception) -> str:
    """A validation error as plain lines ``field: message`` (no pydantic boilerplate), for CLIs and notebooks."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    lines = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        location = ".".join(str(part) for part in item["loc"])
        lines.append(f"{location}: {message}" if location else message)
    return "\n".join(lines)
