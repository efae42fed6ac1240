"""Final renders from locks: how a draft's composition carries over to the final model (``fresh``, ``first-frame``,
``draft-v2v``), with the lineage tags that link a final run to its lock and draft.

Seeds do not carry across models: TI2V-5B samples 48-channel latents at 1/16 scale, A14B 16-channel at 1/8, so the
same seed gives unrelated videos (``FACTS.md`` §1). What carries a composition is the draft itself:

- ``fresh``: the draft's prompt (and negative prompt, when the draft set its own) with the final preset's official
  settings and the final model's own seed;
- ``first-frame``: image-to-video on the final preset (one with ``i2v`` in its tasks) from frame ``frame_index`` of
  the draft video;
- ``draft-v2v``: video-to-video on the final preset (the text-to-video A14B structure) from the draft video, its
  frames picked evenly to the final's ``num_frames`` and resized to the final size, re-noised to ``strength``.

Everything the request alone can say is checked by :class:`FinalRequest` before anything is read from the store;
what needs the lock (the draft's frame count) by :func:`plan_final`, before anything is downloaded or loaded.
The flow: request -> plan (lock, lineage tags) -> spec (inputs fetched into the output folder) ->
:func:`wanflow.rendering.render` with ``stage="final"``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from wanflow.locks import Lock, LockError, check_name, get_lock
from wanflow.presets import PRESETS, get_preset
from wanflow.spec import MAX_SEED, RenderSpec

MODES = ("fresh", "first-frame", "draft-v2v")
#: draft-v2v strength when none is given. With :data:`DRAFT_V2V_FLOW_SHIFT` (1) the strength is the noise level the
#: final starts from on every model: 0.15 starts at 15% noise (t = 150), below both A14B boundaries (875 / 900), so
#: only the low-noise expert, which finishes a scene, runs: the last 15% of the steps (3 of micro-a14b's 20, 6 of
#: T2V-A14B's 40). It is the largest strength probed that keeps the draft's object colour, motion and start in at
#: least 90% of finals on the micro models (micro-ti2v drafts of the 41 held-out prompts, seeds 0-3, micro-a14b
#: finals; ``bench/results/transfer-strength-probe.log``, float32 on a GPU, frames handed over without the mp4): all
#: three kept in 93.9% at 0.1, 91.5% at 0.15, 89.0% at 0.2 and 86.6% at 0.3 (the default before). Through the kit
#: (``python -m wanflow.micro.evaluate --transfer``, the drafts as mp4, CPU; ``bench/results/transfer-draft-v2v.json``)
#: 0.15 keeps all three in 92.1%. A higher strength takes more from the final model and keeps less of the draft. The
#: final runs the last int(steps x strength) steps, so the start is the timestep of the first of them.
DEFAULT_STRENGTH = 0.15
#: Flow shift of every draft-v2v final (the final preset's own shift is for renders from pure noise). At shift f,
#: strength s starts at noise f s / (1 + (f - 1) s): with micro-a14b's 5 strength 0.3 started at 68% noise and the
#: low-noise expert moved the object (all three kept in 58.5% of finals, against 85.4% at shift 1 and 78.0% at
#: shift 2; seed 0, 41 drafts, sixth session); T2V-A14B's 12 would start at 84%. Part of the final's spec and its
#: final_spec_id.
DRAFT_V2V_FLOW_SHIFT = 1.0
#: Run tags of a final render (``stage=final`` comes from :func:`wanflow.rendering.render`). Never ``lock``: that
#: tag marks locked drafts (:mod:`wanflow.locks`).
LINEAGE_TAGS = ("lock_name", "draft_run_id", "draft_spec_id", "transfer", "transfer_strength", "transfer_frame",
                "final_spec_id")
_OVERRIDES = ("num_inference_steps", "width", "height", "num_frames")


class TransferError(ValueError):
    """A final render that cannot be made as asked; one line per problem, ``field: what is wrong; what to do``,
    with the notebook's parameter names (``transfer_mode``, ``final_preset``, ``strength``, ``frame_index``, ...)."""


@dataclass(frozen=True)
class FinalRequest:
    """What a final render is asked to be: a lock, the final preset and how the draft carries over.

    Attributes:
        lock_name: the lock to render (``wanflow locks``).
        final_preset: the final model's preset (``wanflow models``).
        mode: ``fresh``, ``first-frame`` or ``draft-v2v`` (the notebook's ``transfer_mode``).
        strength: draft-v2v only: 0 < strength <= 1, the share of the denoising steps that run and, at
            :data:`DRAFT_V2V_FLOW_SHIFT`, the noise level the final starts from (1 re-noises fully); ignored by the
            other modes. Default :data:`DEFAULT_STRENGTH`.
        frame_index: first-frame only: the draft frame (0-based) that starts the final video; ignored otherwise.
        seed: the final model's seed; None or -1 draws a new one (stored in the final spec). Never the draft's.
        num_inference_steps, width, height, num_frames: overrides; None takes the final preset's official value.

    Raises:
        TransferError: every problem the request shows on its own (unknown mode or preset, a preset that cannot
            do the mode, strength or frame index out of range, bad settings for the preset).
    """

    lock_name: str
    final_preset: str
    mode: str = "fresh"
    strength: float = DEFAULT_STRENGTH
    frame_index: int = 0
    seed: int | None = None
    num_inference_steps: int | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None

    def __post_init__(self):
        if self.seed is not None and self.seed == -1:
            object.__setattr__(self, "seed", None)
        problems = _request_problems(self)
        if problems:
            raise TransferError("\n".join(f"{name}: {message}" for name, message in problems))

    def overrides(self) -> dict:
        """The settings given (not None) among steps, size and frames, as RenderSpec fields."""
        return {key: getattr(self, key) for key in _OVERRIDES if getattr(self, key) is not None}

    def final_spec_id(self, draft_run_id: str) -> str:
        """16 hex digits naming this final render of the draft ``draft_run_id``: SHA-256 of the request's
        canonical JSON (the draft run, final preset, mode, the strength and flow shift or the frame index the mode
        uses, and the seed and settings given). Two requests with equal ids render the same final (a seed left to chance stays
        left to chance), so a batch that finds a FINISHED run with this id may skip it."""
        key = {"draft_run_id": draft_run_id, "final_preset": self.final_preset, "mode": self.mode,
               "seed": self.seed, **self.overrides()}
        if self.mode == "draft-v2v":
            key.update(strength=float(self.strength), flow_shift=DRAFT_V2V_FLOW_SHIFT)
        if self.mode == "first-frame":
            key["frame_index"] = int(self.frame_index)
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _request_problems(request: FinalRequest) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    try:
        check_name(request.lock_name)
    except LockError as err:
        problems.append(("lock_name", str(err).removeprefix("name: ")))
    if request.mode not in MODES:
        problems.append(("transfer_mode", f"{request.mode!r} is not one of {', '.join(MODES)}"))
    if not isinstance(request.final_preset, str) or request.final_preset not in PRESETS:
        problems.append(("final_preset", f"unknown preset {request.final_preset!r}; choose one of: {', '.join(PRESETS)}"))
        return problems
    preset = get_preset(request.final_preset)
    if request.mode == "fresh" and "t2v" not in preset.tasks:
        problems.append(("final_preset", f"{preset.name} is image-to-video only; fresh renders from the prompt "
                                         "alone: use a text-to-video preset, or transfer_mode first-frame"))
    if request.mode == "first-frame":
        if "i2v" not in preset.tasks:
            i2v = ", ".join(p.name for p in PRESETS.values() if "i2v" in p.tasks)
            problems.append(("final_preset", f"{preset.name} is text-to-video only; first-frame needs an "
                                             f"image-to-video preset ({i2v})"))
        if not isinstance(request.frame_index, int) or isinstance(request.frame_index, bool) or request.frame_index < 0:
            problems.append(("frame_index", f"{request.frame_index!r} must be an integer >= 0 (a frame of the draft)"))
    if request.mode == "draft-v2v":
        if preset.structure != "t2v-a14b":
            v2v = ", ".join(p.name for p in PRESETS.values() if p.structure == "t2v-a14b")
            problems.append(("final_preset", f"{preset.name} cannot run draft-v2v: diffusers' video-to-video fits "
                                             f"the text-to-video A14B structure only ({v2v})"))
        strength = request.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            problems.append(("strength", f"{strength!r} is not a number; allowed 0 < strength <= 1"))
        elif not 0.0 < strength <= 1.0:
            problems.append(("strength", f"{strength!r} is out of range; allowed 0 < strength <= 1"))
        else:
            steps = request.num_inference_steps or preset.num_inference_steps
            if int(steps * strength) < 1:
                problems.append(("strength", f"{strength} with {steps} steps runs no denoising step "
                                             f"(int(steps x strength) = 0); use at least {1 / steps:.3g}"))
    if request.seed is not None and (isinstance(request.seed, bool) or not isinstance(request.seed, int)):
        problems.append(("seed", f"{request.seed!r} is not an integer; use an integer 0..{MAX_SEED}, or -1 "
                                 "for a new one"))
    elif request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        problems.append(("seed", f"{request.seed!r} is out of range; use an integer 0..{MAX_SEED}, or -1 "
                                 "for a new one"))
    problems.extend(_setting_problems(preset, request))
    return problems


def _setting_problems(preset, request: FinalRequest) -> list[tuple[str, str]]:
    """The spec's own checks (size multiples, 4k+1 frames, ranges) on the overrides, without the media inputs."""
    from pydantic import ValidationError

    from wanflow.spec import explain

    overrides = request.overrides()
    if not overrides:
        return []
    try:
        RenderSpec(preset=preset.name, prompt="check", seed=0, **overrides)
    except ValidationError as err:
        lines = [line.split(": ", 1) for line in explain(err).splitlines() if ": " in line]
        return [(name, message) for name, message in lines if name in overrides]
    return []


@dataclass(frozen=True)
class FinalPlan:
    """A checked request and its lock: everything but the media inputs."""

    request: FinalRequest
    lock: Lock
    final_spec_id: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "final_spec_id", self.request.final_spec_id(self.lock.run_id))

    @property
    def tags(self) -> dict[str, str]:
        """The final run's lineage tags (see :data:`LINEAGE_TAGS`)."""
        tags = {"lock_name": self.lock.name, "draft_run_id": self.lock.run_id, "draft_spec_id": self.lock.spec.spec_id,
                "transfer": self.request.mode, "final_spec_id": self.final_spec_id}
        if self.request.mode == "draft-v2v":
            tags["transfer_strength"] = f"{float(self.request.strength):g}"
        if self.request.mode == "first-frame":
            tags["transfer_frame"] = str(self.request.frame_index)
        return tags


def plan_final(request: FinalRequest, tracking_uri: str | None = None) -> FinalPlan:
    """Read the lock and check the request against its draft (nothing is downloaded or loaded).

    Raises:
        LockError: no lock called ``request.lock_name``.
        TransferError: ``frame_index`` past the draft's last frame.
        wanflow.TrackingError: the store cannot be reached.
    """
    lock = get_lock(request.lock_name, tracking_uri)
    frames = lock.spec.num_frames
    if request.mode == "first-frame" and request.frame_index >= frames:
        raise TransferError(f"frame_index: {request.frame_index} is past the draft's last frame (lock "
                            f"{lock.name!r} has {frames} frames, 0..{frames - 1})")
    return FinalPlan(request, lock)


def _negative_prompt(draft: RenderSpec) -> str | None:
    """The draft's negative prompt when its author set one; None (the final preset's default) when the draft used
    its own preset's default, so a micro draft's empty default does not replace Wan2.2's default negative prompt."""
    return None if draft.negative_prompt == draft.model.negative_prompt else draft.negative_prompt


def final_spec(plan: FinalPlan, folder: str | os.PathLike) -> RenderSpec:
    """The final render's spec; ``first-frame`` and ``draft-v2v`` fetch the draft video into ``folder/inputs``
    (``draft_frame_<N>.png``, ``draft.mp4``) and point the spec at it by absolute path.

    Raises:
        pydantic.ValidationError: the settings do not fit the final preset (names the field).
    """
    request, draft = plan.request, plan.lock.spec
    fields = {"preset": request.final_preset, "prompt": draft.prompt, "negative_prompt": _negative_prompt(draft),
              "seed": request.seed, **request.overrides()}
    if request.mode != "fresh":
        inputs = Path(folder) / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        video = plan.lock.download("video.mp4", inputs)
        if request.mode == "draft-v2v":
            fields.update(video=str(video.resolve()), strength=float(request.strength), flow_shift=DRAFT_V2V_FLOW_SHIFT)
        else:
            fields["image"] = str(_save_frame(video, request.frame_index, inputs).resolve())
    return RenderSpec.model_validate(fields)


def _save_frame(video: Path, index: int, folder: Path) -> Path:
    from PIL import Image

    from wanflow.media import atomic_path, probe_video

    frames = probe_video(video)["frames"]
    if index >= len(frames):
        raise TransferError(f"frame_index: {index} is past the draft video's last frame ({len(frames)} frames)")
    target = folder / f"draft_frame_{index}.png"
    with atomic_path(target) as temp:
        Image.fromarray(frames[index]).save(temp, format="PNG")
    return target


def default_final_dir(plan: FinalPlan) -> Path:
    """``outputs/<UTC time>-final-<lock>-<final_spec_id[:8]>`` under the current folder."""
    from wanflow.media import safe_name

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / f"{stamp}-final-{safe_name(plan.lock.name)}-{plan.final_spec_id[:8]}"


def render_final(
    request: FinalRequest,
    *,
    tracking_uri: str | None = None,
    out_dir: str | os.PathLike | None = None,
    options=None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
    on_step: Callable | None = None,
):
    """Render ``request`` on the final model and log it as a ``stage=final`` run with lineage tags.

    Args:
        request: the checked request.
        tracking_uri: the store holding the lock, where the final run goes too.
        out_dir: folder for the files (and ``inputs/``); default :func:`default_final_dir`.
        options: :class:`wanflow.loading.LoadOptions` (device, dtype, memory).
        tags: extra run tags (``wanflow replay`` adds ``attempt_id``).
        progress, on_step: as for :func:`wanflow.rendering.render`.

    Returns:
        :class:`wanflow.rendering.RenderResult` (its ``run_id`` is the final run).

    Raises:
        LockError, TransferError: from :func:`plan_final`, before anything is downloaded or loaded.
        pydantic.ValidationError: settings that do not fit the final preset, before the model loads.
        whatever :func:`wanflow.rendering.render` raises (the run then ends FAILED).
    """
    from wanflow.rendering import render

    plan = plan_final(request, tracking_uri)
    folder = Path(out_dir) if out_dir is not None else default_final_dir(plan)
    spec = final_spec(plan, folder)
    return render(spec, options=options, out_dir=folder, stage="final", tags={**plan.tags, **(tags or {})},
                  tracking_uri=tracking_uri, progress=progress, on_step=on_step)


def request_from_dict(values: dict) -> FinalRequest:
    """A :class:`FinalRequest` from the notebook's parameters (``transfer_mode`` is ``mode``, ``steps`` is
    ``num_inference_steps``). Every parameter given is first checked by type, also ``tracking_uri``,
    ``output_dir``, ``device``, ``dtype`` and ``attempt_id``: papermill injects whatever it is given (``-p seed abc``
    is a string, ``-p steps 9.5`` a float, a parameter may be None). Integral floats (``64.0``) and integer
    strings (``"64"``) pass as ints. Other keys are ignored.

    Raises:
        TransferError: one line per bad parameter (``seed: 'abc' is not an integer; use an integer 0..4294967295,
            or None / -1 for a new one``), then as the request does.
    """
    from wanflow.parameters import as_integer, as_number, as_text, check, raise_problems

    default = "or None for the final preset's"
    values, problems = check(values, {
        "lock_name": (as_text, "give a lock name (`wanflow locks`)", False),
        "final_preset": (as_text, f"give a preset name ({', '.join(PRESETS)})", False),
        "transfer_mode": (as_text, f"give one of {', '.join(MODES)}", False),
        "strength": (as_number, "allowed 0 < strength <= 1", False),
        "frame_index": (as_integer, "use an integer >= 0 (a frame of the draft)", False),
        "seed": (as_integer, f"use an integer 0..{MAX_SEED}, or -1 for a new one", True),
        "steps": (as_integer, f"use an integer 1..1000, {default}", True),
        "width": (as_integer, f"use pixels, {default}", True),
        "height": (as_integer, f"use pixels, {default}", True),
        "num_frames": (as_integer, f"use 4k+1, {default}", True),
        "tracking_uri": (as_text, "give an MLflow store URI, or \"\" for the default", False),
        "output_dir": (as_text, "give a folder, or \"\" for the default", False),
        "device": (as_text, "give auto, cpu, cuda, cuda:N or mps", False),
        "dtype": (as_text, "give auto, float32, bfloat16 or float16", False),
        "attempt_id": (as_text, "give \"\" (wanflow replay sets it)", False),
    })
    raise_problems(problems, TransferError)
    return FinalRequest(
        lock_name=values["lock_name"], final_preset=values["final_preset"], mode=values.get("transfer_mode", "fresh"),
        strength=values.get("strength", DEFAULT_STRENGTH), frame_index=values.get("frame_index", 0),
        seed=values.get("seed"), num_inference_steps=values.get("steps"), width=values.get("width"),
        height=values.get("height"), num_frames=values.get("num_frames"),
    )
