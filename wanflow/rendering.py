"""One render, end to end: spec -> frames -> files -> MLflow run (the module behind ``wanflow.render``).

:func:`render` is the one call the CLI, the notebooks and the replay use. Data flows one way:
:func:`wanflow.generate.generate` makes the frames, :mod:`wanflow.media` writes the files,
:mod:`wanflow.tracking` records the run. The run is created before the model loads and always ends, FINISHED or
FAILED (a process killed outright leaves it RUNNING until :func:`wanflow.tracking.end_orphaned_runs` ends it
KILLED).

A logged render writes its files into a hidden staging folder (:func:`wanflow.tracking.staging_folder`), logs
them, ends its run FINISHED, and only then moves them into the output folder (``video.mp4`` last). So a
``video.mp4`` in an output folder always belongs to a FINISHED run, and a render killed at any point leaves only
the staging folder, which the next orphan check removes (killed in the instant between FINISHED and the move,
the files stay there; the run's artifacts hold them).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from wanflow import __version__
from wanflow.acceleration import check_approximations
from wanflow.exceptions import DiskFullError, is_disk_full
from wanflow.generate import Generation, StepEvent, generate
from wanflow.loading import LoadOptions, find_model, resolve_memory
from wanflow.media import MediaFiles, check_writable, safe_name, write_outputs
from wanflow.quality import frame_metrics
from wanflow.spec import RenderSpec
from wanflow.text import MAX_SEQUENCE_LENGTH

STAGES = ("draft", "final")


@dataclass
class RenderResult:
    """A finished render: the spec, uint8 frames (F, H, W, 3), the files, the seed used, seconds per stage
    (``load``, ``text_encode``, ``denoise``, ``decode``, ``encode`` = writing the files, ``log`` = MLflow),
    the expert per step, peak memory (GiB) and the MLflow run id (None when ``log=False``)."""

    spec: RenderSpec
    frames: np.ndarray
    files: MediaFiles
    seed: int
    timings: dict[str, float]
    steps: list[StepEvent]
    peak_memory_gib: float
    run_id: str | None
    tracking_uri: str | None
    generation: Generation
    #: Re-render check: the earlier run of the same spec on the same device and dtype, and whether its frames were
    #: bit-identical (None when there is none, or when not logging).
    earlier_run_id: str | None = None
    frames_match: bool | None = None
    #: How GPU memory was planned (the ``memory_plan`` tag): ``auto <mode>: ...``, ``manual`` or ``not needed``.
    memory_plan: str = ""

    @property
    def video(self) -> Path:
        return self.files.video

    @property
    def out_dir(self) -> Path:
        return self.files.video.parent


def default_out_dir(spec: RenderSpec) -> Path:
    """``outputs/<UTC time>-<preset>-<spec_id[:8]>`` under the current folder (never anything from the prompt)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / f"{stamp}-{safe_name(spec.preset)}-{spec.spec_id[:8]}"


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"wanflow_version": __version__, "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__}


def render(
    spec: RenderSpec,
    *,
    options: LoadOptions | None = None,
    out_dir: str | os.PathLike | None = None,
    stage: str = "draft",
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
    progress: bool = True,
    on_step: Callable[[StepEvent], None] | None = None,
) -> RenderResult:
    """Render ``spec``, write its files and log one MLflow run.

    Args:
        spec: what to render (validated on construction).
        options: device, dtype, memory options; automatic by default (a real model on a GPU gets the fastest
            memory mode that fits the card: :func:`wanflow.loading.plan_memory`, tag ``memory_plan``).
        out_dir: folder for ``video.mp4``, ``preview.gif``, ``contact_sheet.png``, ``spec.json``; default
            :func:`default_out_dir`.
        stage: ``draft`` (exploration) or ``final`` (replayed from a lock); a run tag.
        tags: extra run tags (e.g. lineage of a final render).
        tracking_uri: MLflow store; default :func:`wanflow.tracking.default_tracking_uri`.
        log: False renders and writes files without MLflow.
        progress: tqdm bar over denoising steps.
        on_step: called after each denoising step (see :class:`wanflow.generate.StepEvent`).

    Raises:
        ValueError: bad stage, device or dtype, conflicting memory options, approximations this machine cannot
            run (before anything is loaded or logged).
        PermissionError: ``out_dir`` is not writable (before anything is loaded or logged).
        wanflow.tracking.TrackingError: the MLflow store cannot be reached (before the model loads).
        ModelNotFoundError, ModelLoadError: the preset's weights are missing, incomplete or a weights file is
            truncated (before anything is logged); ModelLoadError also when diffusers cannot read them (run FAILED).
        DiskFullError: the disk filled up while writing the files or the run's artifacts (run FAILED; the
            message says where; no file of the render is left in ``out_dir``).

    A render that fails removes its staging folder, and the output folder it created if nothing else was
    written into it. A prompt longer than MLflow's param limit (:data:`wanflow.tracking.PARAM_VALUE_LIMIT`) is
    logged cut, with the tag ``params_truncated=prompt`` and the full text as the artifact ``prompt.txt`` (the same
    for ``negative_prompt``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
    options = options or LoadOptions()
    options.check()
    options, memory_plan = resolve_memory(options, spec.model)
    option_tags = {**options.as_tags(), "memory_plan": memory_plan}  # raises on a bad device/dtype before any work
    check_approximations(spec.approximations, options.torch_device())
    find_model(spec.model, options.model_dir)  # raises ModelNotFoundError before a run exists
    folder = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    created = not folder.exists()
    check_writable(folder)
    try:
        return _render_into(folder, spec, options, option_tags, stage, tags, tracking_uri, log, progress, on_step)
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _render_into(folder, spec, options, option_tags, stage, tags, tracking_uri, log, progress, on_step) -> RenderResult:
    run, cut = None, []
    staging = folder
    if log:
        from wanflow.tracking import RenderRun, fit_params, run_name, staging_folder

        base_tags = {
            "stage": stage, "preset": spec.preset, "spec_id": spec.spec_id, "task": spec.task,
            **option_tags, **_versions(), "out_dir": str(folder.resolve()), **(tags or {}),
        }
        # a prompt past MLflow's param limit: the param cut (tagged), the full text beside it as <field>.txt
        params, cut = fit_params(spec.to_params())
        if cut:
            base_tags["params_truncated"] = ",".join(cut)
        run = RenderRun.start(params, base_tags, run_name(spec.prompt, stage), tracking_uri)
        staging = staging_folder(folder, run.run_id)
    try:
        for field in cut:
            run.client.log_text(run.run_id, getattr(spec, field), f"{field}.txt")
        generation = generate(spec, options, on_step=on_step, progress=progress)
        started = time.perf_counter()
        files = write_outputs(generation.frames, staging, spec.canonical_json(), spec.fps)
        timings = {**generation.timings, "encode": time.perf_counter() - started}
        earlier = None
        if run is not None:
            result_tags = _result_tags(generation)
            earlier = run.earlier_render(base_tags)
            if earlier is not None:
                result_tags["rerender_of"] = earlier[0]
                result_tags["frames_match"] = str(earlier[1] == generation.frames_sha256).lower()
            inputs = [Path(spec.image)] if spec.image else []  # the i2v first frame, so MLflow alone reproduces it
            try:
                timings["log"] = run.finish(_metrics(generation, timings, spec), result_tags,
                                            [*files.as_dict().values(), *inputs])
            except OSError as err:
                if not is_disk_full(err):
                    raise
                raise DiskFullError(f"tracking_uri: the disk is full: cannot store the run's files in the artifact "
                                    f"store of {run.tracking_uri} ({err.strerror or err}); free some space") from err
    except BaseException as err:
        if run is not None:
            run.fail(err)
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if run is not None:
        files = _publish(files, folder)  # after FINISHED: the status is the commit point, the move only follows it
    return RenderResult(
        spec=spec, frames=generation.frames, files=files, seed=generation.seed, timings=timings,
        steps=generation.steps, peak_memory_gib=generation.peak_memory_gib,
        run_id=run.run_id if run else None, tracking_uri=run.tracking_uri if run else None, generation=generation,
        earlier_run_id=earlier[0] if earlier else None,
        frames_match=(earlier[1] == generation.frames_sha256) if earlier else None,
        memory_plan=option_tags["memory_plan"],
    )


def _publish(staged: MediaFiles, folder: Path) -> MediaFiles:
    """Move a FINISHED render's files from its staging folder into ``folder`` (the video last, so a folder with a
    ``video.mp4`` holds the whole render) and remove the staging folder."""
    moved = {}
    for key in ("spec", "preview", "contact_sheet", "video"):
        source = getattr(staged, key)
        moved[key] = folder / source.name
        os.replace(source, moved[key])
    shutil.rmtree(staged.video.parent, ignore_errors=True)
    return MediaFiles(**moved)


def _metrics(generation: Generation, timings: dict[str, float], spec: RenderSpec) -> dict[str, float]:
    metrics = {f"{stage}_s": seconds for stage, seconds in timings.items()}
    metrics["s_per_step"] = timings["denoise"] / max(1, spec.denoising_steps)
    metrics["peak_memory_gib"] = generation.peak_memory_gib
    metrics["prompt_tokens"] = generation.prompt_tokens
    for expert in ("transformer", "transformer_2"):
        metrics[f"steps_{expert}"] = sum(1 for s in generation.steps if s.expert == expert)
    # Prompt adherence means something only for the micro models, whose captions the detector reads.
    prompt = spec.prompt if spec.model.kind == "micro" else None
    metrics.update(frame_metrics(generation.frames, prompt))
    return metrics


def _result_tags(generation: Generation) -> dict[str, str]:
    return {
        "model_source": generation.source.origin,
        "model_path": str(generation.source.path),
        "model_revision": generation.source.revision,
        "pipeline": generation.pipeline_class,
        "scheduler": generation.scheduler.get("class", ""),
        "expert_schedule": generation.expert_schedule,
        "frames_sha256": generation.frames_sha256,
        "prompt_truncated": str(generation.prompt_tokens > MAX_SEQUENCE_LENGTH).lower(),
        "peak_memory_kind": generation.memory_kind,
        **generation.acceleration,
    }
