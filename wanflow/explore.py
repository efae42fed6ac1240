"""The exploration studio's logic, without widgets: controls <-> :class:`RenderSpec`, generate, lock, history.

:mod:`wanflow.studio` is a thin ipywidgets view over this module; ``notebooks/01_explore.ipynb`` calls these
functions directly when it runs headless under papermill (where widgets never fire callbacks). Everything here is
plain Python and tested without a kernel.

    >>> state = StudioState.from_preset("tiny-ti2v", prompt="a red circle moving left")
    >>> made = do_generate(state, tracking_uri=None, output_dir="outputs")     # doctest: +SKIP
    >>> do_lock(made.result.run_id, "hero")                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

from wanflow.presets import DEFAULT_PRESET, get_preset
from wanflow.spec import RenderSpec, explain

SeedMode = Literal["keep", "new random"]
SEED_MODES: tuple[str, ...] = ("keep", "new random")

#: Settings the studio shows, in the field's words (RenderSpec field names).
SETTINGS = ("num_inference_steps", "guidance_scale", "guidance_scale_2", "flow_shift", "width", "height",
            "num_frames", "fps")


def notebook_paths(tracking_uri: str = "", output_dir: str | os.PathLike = "outputs") -> tuple[str, Path]:
    """The store and output folder a notebook should use, as ``(tracking_uri, output_dir)``.

    Jupyter starts a notebook in the notebook's own folder. When that is the project's ``notebooks/`` (a
    ``pyproject.toml`` beside it), defaults resolve against the project root, so the notebooks share the store and
    ``outputs/`` of the CLI and ``wanflow ui`` (and git ignores them). ``tracking_uri``: as given, else
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlruns/mlflow.db``; a relative ``output_dir`` is made absolute
    under the root.
    """
    cwd = Path.cwd()
    root = cwd.parent if cwd.name == "notebooks" and (cwd.parent / "pyproject.toml").is_file() else cwd
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    folder = Path(output_dir)
    return uri, folder if folder.is_absolute() else root / folder


def check_notebook_parameters(preset: object, tracking_uri: object, output_dir: object, headless_prompt: object,
                              headless_seed: object) -> int:
    """Check ``01_explore.ipynb``'s papermill parameters by type before anything runs (papermill injects whatever
    it is given: ``-p headless_seed abc`` is a string, a parameter may be None). Returns ``headless_seed`` as an int.

    Raises:
        ValueError: one line per bad parameter, ``name: what it is; what is allowed``.
    """
    from wanflow.parameters import as_integer, as_text, check, raise_problems
    from wanflow.presets import PRESETS
    from wanflow.spec import MAX_SEED

    values = dict(preset=preset, tracking_uri=tracking_uri, output_dir=output_dir, headless_prompt=headless_prompt,
                  headless_seed=headless_seed)
    values, problems = check(values, {
        "preset": (as_text, f"give a preset name ({', '.join(PRESETS)}), or \"\" for the default", False),
        "tracking_uri": (as_text, "give an MLflow store URI, or \"\" for the default", False),
        "output_dir": (as_text, "give a folder path", False),
        "headless_prompt": (as_text, "give a prompt, or \"\" for no headless render", False),
        "headless_seed": (as_integer, f"use an integer from 0 to {MAX_SEED}", False),
    })
    if isinstance(values["preset"], str) and values["preset"] and values["preset"] not in PRESETS:
        problems.append(("preset", f"unknown preset {values['preset']!r}; choose one of: {', '.join(PRESETS)}"))
    if isinstance(values["headless_seed"], int) and not 0 <= values["headless_seed"] <= MAX_SEED:
        problems.append(("headless_seed", f"{values['headless_seed']} is out of range; use an integer from 0 to "
                                          f"{MAX_SEED}"))
    raise_problems(problems)
    return values["headless_seed"]


@dataclass(frozen=True)
class StudioState:
    """What the studio's controls hold: one render's inputs before validation.

    ``seed_mode="keep"`` renders with ``seed``; ``"new random"`` draws a fresh seed on every generate (the seed
    actually used is written back into ``seed`` by :func:`do_generate`). ``guidance_scale_2`` is None on
    one-expert presets. Sizes are pixels, ``fps`` frames per second of the mp4.
    """

    preset: str
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    seed_mode: SeedMode = "new random"
    num_inference_steps: int = 1
    guidance_scale: float = 1.0
    guidance_scale_2: float | None = None
    flow_shift: float = 1.0
    width: int = 64
    height: int = 64
    num_frames: int = 1
    fps: int = 1

    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, prompt: str = "", seed: int | None = None) -> "StudioState":
        """Every setting from the preset's official values. A given ``seed`` is kept; without one, each
        generate draws a new random seed.

        Raises:
            wanflow.presets.UnknownPresetError: no such preset.
        """
        state = cls(preset=preset, prompt=prompt, negative_prompt=get_preset(preset).negative_prompt)
        state = state.with_preset(preset)
        if seed is not None:
            state = dataclasses.replace(state, seed=int(seed), seed_mode="keep")
        return state

    def with_preset(self, preset: str) -> "StudioState":
        """The same prompt and seed on another preset, every setting reset to that preset's defaults. The
        negative prompt follows the preset only if it was the old preset's default (a user's text is kept).

        Raises:
            wanflow.presets.UnknownPresetError: no such preset.
        """
        new = get_preset(preset)
        try:
            old_negative = get_preset(self.preset).negative_prompt
        except ValueError:
            old_negative = None
        negative = new.negative_prompt if self.negative_prompt in ("", old_negative) else self.negative_prompt
        return dataclasses.replace(
            self, preset=preset, negative_prompt=negative,
            num_inference_steps=new.num_inference_steps, guidance_scale=new.guidance_scale,
            guidance_scale_2=new.guidance_scale_2, flow_shift=new.flow_shift, width=new.width, height=new.height,
            num_frames=new.num_frames, fps=new.fps,
        )

    @property
    def two_experts(self) -> bool:
        """Whether the preset has two experts (and so a ``guidance_scale_2``)."""
        return get_preset(self.preset).two_experts

    def to_spec(self) -> RenderSpec:
        """The validated spec; a new random seed in ``"new random"`` mode.

        Raises:
            pydantic.ValidationError: one line per bad field (see :func:`field_errors`).
        """
        fields = {name: getattr(self, name) for name in SETTINGS}
        if not self.two_experts:
            fields["guidance_scale_2"] = None
        return RenderSpec(preset=self.preset, prompt=self.prompt, negative_prompt=self.negative_prompt,
                          seed=self.seed if self.seed_mode == "keep" else None, **fields)


def controls_from_spec(spec: RenderSpec) -> StudioState:
    """The controls that render ``spec`` again: its preset, prompts, settings and seed (mode ``keep``).
    An input image is not carried (the studio renders text-to-video)."""
    return StudioState(
        preset=spec.preset, prompt=spec.prompt, negative_prompt=spec.negative_prompt or "", seed=spec.seed,
        seed_mode="keep", **{name: getattr(spec, name) for name in SETTINGS},
    )


def controls_from_params(params: dict[str, str]) -> StudioState:
    """The controls of a past render from its MLflow params (strings, as :meth:`RenderSpec.to_params` logs
    them; empty string = None). Reads nothing else, so it works on any store without downloads.

    Raises:
        ValueError: the params are not a wanflow render's (``preset`` or ``seed`` missing).
    """
    if not params.get("preset") or not params.get("seed"):
        raise ValueError("run: its params are not a wanflow render's (no preset or seed)")
    state = StudioState.from_preset(params["preset"], prompt=params.get("prompt", ""), seed=int(params["seed"]))
    values = {}
    for name in SETTINGS:
        raw = params.get(name, "")
        if raw == "":
            continue
        kind = type(getattr(state, name)) if getattr(state, name) is not None else float
        values[name] = int(float(raw)) if kind is int else float(raw)
    return dataclasses.replace(state, negative_prompt=params.get("negative_prompt", ""), **values)


def field_errors(error: Exception) -> dict[str, str]:
    """A validation error as ``{field: message}`` (fields in the order reported; several problems of one field
    joined by ``; ``). Messages without a field go under ``""``."""
    out: dict[str, str] = {}
    for line in explain(error).splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*): (.*)$", line)
        field, message = (match.group(1), match.group(2)) if match else ("", line)
        out[field] = f"{out[field]}; {message}" if field in out else message
    return out


@dataclass
class Generated:
    """What :func:`do_generate` returns: the spec rendered, the render, and the controls to show next (the
    seed actually used written back)."""

    spec: RenderSpec
    result: "object"  # wanflow.rendering.RenderResult (imported lazily: torch is heavy)
    state: StudioState

    @property
    def run_id(self) -> str | None:
        return self.result.run_id


def do_generate(
    state: StudioState,
    *,
    tracking_uri: str | None = None,
    output_dir: str | os.PathLike = "outputs",
    options=None,
    on_step: Callable | None = None,
    progress: bool = False,
) -> Generated:
    """Validate the controls, render one draft and log its MLflow run.

    Args:
        state: the controls.
        tracking_uri: MLflow store (default: the project's, see :func:`wanflow.tracking.default_tracking_uri`).
        output_dir: the render's files go to ``output_dir/<UTC time>-<preset>-<spec id>/``.
        options: :class:`wanflow.loading.LoadOptions` (default: automatic).
        on_step: called after every denoising step with a :class:`wanflow.generate.StepEvent`.
        progress: tqdm bar on stderr (off: the studio has its own bar).

    Raises:
        pydantic.ValidationError: bad controls, before anything loads or is logged.
        Whatever :func:`wanflow.render` raises (the run then ends FAILED).
    """
    from wanflow.rendering import default_out_dir, render

    spec = state.to_spec()
    folder = Path(output_dir) / default_out_dir(spec).name
    result = render(spec, options=options, out_dir=folder, tracking_uri=tracking_uri, progress=progress,
                    on_step=on_step)
    return Generated(spec=spec, result=result, state=dataclasses.replace(state, seed=result.seed))


def do_lock(run_id: str | None, name: str, tracking_uri: str | None = None, force: bool = False):
    """Lock the render ``run_id`` as ``name`` (see :func:`wanflow.locks.lock`); returns the
    :class:`wanflow.locks.Lock`.

    Raises:
        wanflow.locks.LockError: no render chosen yet, a bad name, or what :func:`wanflow.locks.lock` refuses.
    """
    from wanflow.locks import LockError, lock

    if not run_id:
        raise LockError("run_id: generate a render or load one from the history first")
    return lock(run_id, name.strip(), tracking_uri, force=force)


@dataclass(frozen=True)
class HistoryRow:
    """One past render for the studio's history list."""

    run_id: str
    status: str
    stage: str
    preset: str
    seed: str
    prompt: str
    lock: str
    start_time: pd.Timestamp
    artifact_uri: str
    params: dict
    #: spec fields whose param MLflow holds cut (the run's ``params_truncated`` tag); their full text is in
    #: ``<field>.txt`` among the run's artifacts
    truncated: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """One line: time, stage, preset, seed, lock and the prompt's start."""
        prompt = " ".join(self.prompt.split())
        prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        lock = f" 🔒{self.lock}" if self.lock else ""
        status = "" if self.status == "FINISHED" else f" [{self.status}]"
        return (f"{self.start_time:%H:%M:%S} {self.stage} {self.preset} seed {self.seed}{lock}{status} "
                f"· {prompt} · {self.run_id[:8]}")

    def state(self) -> StudioState:
        """The controls that render this run again (see :func:`controls_from_params`); a prompt too long for an
        MLflow param comes from the run's ``prompt.txt``."""
        params = dict(self.params)
        if self.truncated:
            from wanflow.artifacts import run_artifact

            for field in self.truncated:
                params[field] = run_artifact(self.artifact_uri, f"{field}.txt").read_text(encoding="utf-8")
        return controls_from_params(params)

    def thumbnail(self, size: int = 112) -> bytes | None:
        """A small animated gif from the run's ``preview.gif`` (None if it has none, e.g. a FAILED run)."""
        from wanflow.artifacts import ArtifactMissingError, run_artifact

        try:
            return thumbnail_gif(run_artifact(self.artifact_uri, "preview.gif"), size)
        except (ArtifactMissingError, OSError):
            return None


def history_rows(tracking_uri: str | None = None, limit: int = 8) -> list[HistoryRow]:
    """The newest ``limit`` renders in the store (drafts and finals), newest first.

    Raises:
        wanflow.TrackingError: the store cannot be reached.
    """
    from wanflow.tracking import client_and_experiment

    client, experiment_id = client_and_experiment(tracking_uri)
    runs = client.search_runs([experiment_id], max_results=limit, order_by=["attributes.start_time DESC"])
    return [
        HistoryRow(
            run_id=run.info.run_id, status=run.info.status, stage=run.data.tags.get("stage", ""),
            preset=run.data.tags.get("preset", ""), seed=run.data.params.get("seed", ""),
            prompt=run.data.params.get("prompt", ""), lock=run.data.tags.get("lock", ""),
            start_time=pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"), artifact_uri=run.info.artifact_uri,
            params=dict(run.data.params),
            truncated=tuple(f for f in run.data.tags.get("params_truncated", "").split(",") if f),
        )
        for run in runs
    ]


def thumbnail_gif(path: str | os.PathLike, size: int = 112, max_frames: int = 16) -> bytes:
    """An animated gif at most ``size`` px on its long side and ``max_frames`` frames (evenly spaced, same
    playing time), from a gif such as a render's ``preview.gif``: a few kB to tens of kB for a notebook."""
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
        duration = gif.info.get("duration", 100)
    step = max(1, -(-len(frames) // max_frames))
    frames = frames[::step]
    scale = min(1.0, size / max(frames[0].size))
    tiles = [f.resize((max(1, round(f.width * scale)), max(1, round(f.height * scale))), Image.LANCZOS)
             for f in frames]
    buffer = io.BytesIO()
    tiles[0].save(buffer, format="GIF", save_all=True, append_images=tiles[1:], duration=duration * step, loop=0)
    return buffer.getvalue()
