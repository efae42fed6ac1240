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

from wanflow.parameters import ParameterError, as_integer, as_number, as_text, check
from wanflow.presets import Preset, UnknownPresetError, get_preset

#: Seeds are unsigned 32-bit, as numpy's and most UIs'; torch accepts them on every device.
MAX_SEED = 2**32 - 1
#: Longest prompt (and negative prompt), in characters. The text encoder reads only the first 512 tokens (roughly
#: 2,000 characters of English); the cap keeps the spec JSON, which travels in the mp4's ``comment`` tag on the
#: ffmpeg command line, under Linux's 128 KiB limit for one argument (4 bytes per character at worst, both prompts).
MAX_PROMPT_CHARS = 12_000

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
V2V_DEFAULT_STRENGTH = 0.8
#: Fields added after version 1 are left out of the canonical JSON while unset, so older specs keep their ids.
_OPTIONAL_FIELDS = ("video", "video_sha256", "strength", "approximations")


class Adapter(BaseModel):
    """A LoRA adapter to apply to the experts (room for later; rendering with adapters is not implemented yet).

    ``target`` names the experts it goes into: on two-expert models per-expert features must reach both
    ``transformer`` and ``transformer_2`` (``FACTS.md`` §1).
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
    approximations: tuple[Literal["first-block-cache", "fp8", "sage-attention", "taylorseer"], ...] = ()

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
        data = _checked_types(data, preset, list(cls.model_fields))
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
            if data.get(key) is not None:
                data[key] = os.path.abspath(os.path.expanduser(data[key]))
        if data.get("video") is not None and data.get("strength") is None:
            data["strength"] = V2V_DEFAULT_STRENGTH
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


def _as_path(value: Any, allowed: str) -> str:
    """A path field's value as a string (``os.PathLike`` too); ParameterError for a non-path, empty or NUL."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ParameterError(f"{value!r} is not a path; {allowed}")
    if not value.strip():
        raise ParameterError(f"{value!r} is an empty path; {allowed}")
    if "\0" in value:
        raise ParameterError(f"{value!r} holds a NUL character; {allowed}")
    return value


#: The names :attr:`RenderSpec.approximations` takes (see :mod:`wanflow.acceleration`).
APPROXIMATION_NAMES = ("first-block-cache", "fp8", "sage-attention", "taylorseer")
#: The step caches among them: each skips work on some denoising steps, and a transformer holds one cache at a time.
STEP_CACHES = ("first-block-cache", "taylorseer")


def _as_approximations(value: Any, allowed: str) -> tuple[str, ...]:
    """Approximation names as a sorted tuple without repeats (a set: order does not matter), from a list or a
    comma-separated string (``"fp8,first-block-cache"`` from the CLI or a papermill parameter)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(name, str) for name in value):
        raise ParameterError(f"{value!r} is not a list of names; {allowed}")
    names = {name.strip() for name in value if name.strip()}
    if "none" in names and len(names) > 1:
        raise ParameterError(f"'none' (exact) cannot be combined with {', '.join(sorted(names - {'none'}))}; {allowed}")
    names -= {"none"}  # "none": how a run's param says exact
    unknown = sorted(names - set(APPROXIMATION_NAMES))
    if unknown:
        raise ParameterError(f"unknown {', '.join(map(repr, unknown))}; {allowed}")
    if len(names & set(STEP_CACHES)) > 1:
        raise ParameterError(f"{' and '.join(STEP_CACHES)} are both step caches; pick one")
    return tuple(sorted(names))


def _checked_types(data: dict, preset: Preset, fields: list[str]) -> dict:
    """``data`` with its values converted to the fields' types, or ValueError with one line per problem: an
    unknown field, or a value of the wrong type (``seed: 'abc' is not an integer; use an integer from 0 to ...``).
    Pydantic's own messages would not say what is allowed."""
    problems = [(key, f"not a spec field; allowed fields: {', '.join(fields)}") for key in data if key not in fields]
    if "prompt" not in data:
        problems.append(("prompt", "required; describe what the video shows"))

    def limits(field: str) -> str:
        low, high = LIMITS[field]
        return f"allowed {low}..{high}"

    size = f"a multiple of {preset.size_multiple} on {preset.name}"
    media = "give the path of {}, or leave {} unset"
    rules = {
        "prompt": (as_text, "give the prompt as a string", False),
        "negative_prompt": (as_text, "give a string, or None for the preset's default", True),
        "seed": (as_integer, f"use an integer from 0 to {MAX_SEED}, or None for a random one", True),
        "num_inference_steps": (as_integer, limits("num_inference_steps"), True),
        "width": (as_integer, f"{limits('width')}, {size}", True),
        "height": (as_integer, f"{limits('height')}, {size}", True),
        "num_frames": (as_integer, f"allowed 4k+1 in 1..{LIMITS['num_frames'][1]} ({preset.name}'s official value is "
                                   f"{preset.num_frames})", True),
        "fps": (as_integer, limits("fps"), True),
        "guidance_scale": (as_number, limits("guidance_scale"), True),
        "guidance_scale_2": (as_number, limits("guidance_scale_2"), True),
        "flow_shift": (as_number, limits("flow_shift"), True),
        "strength": (as_number, "allowed 0 < strength <= 1", True),
        "image": (_as_path, media.format("a PNG, JPEG or WebP image", "image"), True),
        "video": (_as_path, media.format("an mp4 video", "video"), True),
        "image_sha256": (as_text, "64 hex digits, or None", True),
        "video_sha256": (as_text, "64 hex digits, or None", True),
        "approximations": (_as_approximations, f"allowed: {', '.join(APPROXIMATION_NAMES)} (comma-separated), or "
                                               "none for the exact path", True),
    }
    data, type_problems = check(data, rules)
    problems.extend(type_problems)
    if problems:
        raise ValueError("\n".join(f"{field}: {message}" for field, message in problems))
    return data


def _text_problem(text: str) -> str | None:
    """What is wrong with a prompt's characters, or None: too long, or a control character (other than tab and
    newline) or a lone surrogate, which ffmpeg's command line, JSON and MLflow cannot carry as typed."""
    if len(text) > MAX_PROMPT_CHARS:
        return (f"{len(text)} characters is too long; allowed at most {MAX_PROMPT_CHARS} (the text encoder reads "
                "only the first 512 tokens)")
    for position, char in enumerate(text):
        code = ord(char)
        if (code < 32 and char not in "\t\n\r") or code == 127 or 0xD800 <= code <= 0xDFFF:
            return (f"holds the control character U+{code:04X} at position {position}; allowed: printable text, "
                    "tabs and newlines")
    return None


def _nearest(value: int, allowed: list[int]) -> int:
    return min(allowed, key=lambda a: (abs(a - value), a))


def _problems(spec: RenderSpec, preset: Preset) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not spec.prompt.strip():
        problems.append(("prompt", "must not be empty or only whitespace; describe what the video shows"))
    for field in ("prompt", "negative_prompt"):
        problem = _text_problem(getattr(spec, field) or "")
        if problem:
            problems.append((field, problem))
    if not 0 <= spec.seed <= MAX_SEED:
        problems.append(("seed", f"{spec.seed} is out of range; use an integer from 0 to {MAX_SEED}"))
    out_of_range = set()  # the rules below (multiples, 4k+1) are checked only on values within range
    for field, (low, high) in LIMITS.items():
        value = getattr(spec, field)
        if value is not None and not low <= value <= high:
            problems.append((field, f"{value} is out of range; allowed {low}..{high}"))
            out_of_range.add(field)
    if spec.guidance_scale_2 is not None and not preset.two_experts:
        problems.append((
            "guidance_scale_2",
            f"only for two-expert presets (t2v-a14b, i2v-a14b, ...); {preset.name} has one transformer, "
            "use guidance_scale",
        ))
    for field, index in (("width", 0), ("height", 1)):
        value = getattr(spec, field)
        if field not in out_of_range and value % preset.size_multiple:
            official = sorted({size[index] for size in preset.sizes})
            problems.append((
                field,
                f"{value} must be a multiple of {preset.size_multiple} on {preset.name}; "
                f"{_nearest(value, official)} is the official size",
            ))
        if field not in out_of_range and value > preset.max_side:
            problems.append((field, f"{value} is more than {preset.name} can place; allowed at most "
                                    f"{preset.max_side} (its position embedding covers {preset.rope_max_seq_len} "
                                    f"patches of {preset.size_multiple} px)"))
    if "num_frames" not in out_of_range and spec.num_frames > preset.max_frames:
        problems.append(("num_frames", f"{spec.num_frames} is more than {preset.name} can place; allowed at most "
                                       f"{preset.max_frames} (its position embedding covers "
                                       f"{preset.rope_max_seq_len} latent frames)"))
    if "num_frames" not in out_of_range and (spec.num_frames - 1) % 4:
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


#: Image modes that convert to RGB without losing their meaning: 8 bits per channel. 16-bit and float images
#: (``I;16``, ``I``, ``F``) would be clipped to white by ``convert("RGB")``.
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")


def _image_problem(path: Path) -> str | None:
    """What keeps ``path`` from being an image-to-video first frame, or None. The image is decoded in full, so a
    truncated file is caught here and not after the model has loaded."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file"
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            mode, frames = img.mode, getattr(img, "n_frames", 1)
            img.load()
    except PermissionError:
        return f"{path} is not readable (permission denied)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{path} is not an image PIL can read ({err.__class__.__name__}); use PNG, JPEG or WebP"
    if frames > 1:
        return (f"{path} is animated ({frames} frames); image-to-video starts from one still image: save the frame "
                "you want as PNG, JPEG or WebP")
    if mode not in IMAGE_MODES:
        return (f"{path} has mode {mode} (more than 8 bits per channel); use an 8-bit RGB, RGBA, grayscale or "
                "palette image (PNG, JPEG or WebP)")
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
