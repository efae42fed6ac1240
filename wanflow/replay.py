"""Replay: every lock (or the ones named) rendered on the final model by running ``notebooks/02_render.ipynb``
through papermill, once per lock, with resume and per-lock failure records.

- **Parameters** go to papermill as a Python dict (its Python API, not ``-p`` strings, so no type guessing). The
  prompt is not a parameter at all: the notebook reads it from the lock's ``spec.json`` in the store, so text
  travels byte for byte whatever it holds. Only names, numbers and paths cross into the notebook, and papermill
  writes strings as escaped literals.
- **Kernel**: :class:`CurrentPythonKernelManager` starts the kernel with this process's interpreter
  (``sys.executable -m ipykernel_launcher``), built from ipykernel's own native kernel spec. Nothing is registered
  and no ``kernel.json`` anywhere is read, so a fresh virtualenv works and a ``python3`` kernel registered for another
  interpreter is never picked up.
- **Finding the run and attaching the notebook**: papermill writes the executed notebook only when execution ends,
  so the notebook cannot attach itself. Replay gives each attempt an ``attempt_id`` (a notebook parameter that
  becomes a run tag), and once papermill returns it finds the run by that tag and logs the executed notebook at the
  run's root as ``02_render.ipynb``: on the FINISHED run, or on the FAILED one (``render`` ends its run FAILED on
  error). A lock that fails before its render starts (e.g. a frame index past this draft's last frame, when other
  locks of the batch are long enough) gets a FAILED run made here, with the lineage tags, the error and the failed
  notebook.
- **Resume**: a lock is skipped when a FINISHED run carries the ``final_spec_id`` the request gives for it
  (:meth:`wanflow.transfer.FinalRequest.final_spec_id`), unless ``force``.
- **Crashes**: a replay killed outright (SIGKILL, a preempted VM) can be run again as it was. Before rendering,
  it ends the store's orphaned RUNNING runs KILLED (:func:`wanflow.tracking.end_orphaned_runs`: same host and
  process gone, or no heartbeat for 10 minutes) and removes their staging folders; a kill before a final's run
  is FINISHED leaves no ``video.mp4`` (a render's files reach its folder only after FINISHED), and one after it
  leaves a FINISHED run that resume skips. When only the kernel dies (e.g. killed for memory), the attempt's run
  is ended FAILED at once and the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
from jupyter_client import AsyncKernelManager

from wanflow.loading import LoadOptions
from wanflow.locks import get_lock, list_locks
from wanflow.media import check_writable, safe_name
from wanflow.tracking import (RenderRun, client_and_experiment, end_orphaned_runs, error_message,
                              resolve_tracking_uri, staging_folder)
from wanflow.transfer import DEFAULT_STRENGTH, FinalPlan, FinalRequest, TransferError

#: The final-render notebook, in the repository beside the package (a checkout or an editable install).
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_render.ipynb"
#: The executed notebook's name among the run's artifacts.
NOTEBOOK_ARTIFACT = "02_render.ipynb"
#: The final preset per mode when none is given: the production A14B models.
DEFAULT_FINAL = {"fresh": "t2v-a14b", "first-frame": "i2v-a14b", "draft-v2v": "t2v-a14b"}


class CurrentPythonKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is always this interpreter (``sys.executable``) with ipykernel, whatever
    the notebook's kernelspec name or the kernels registered on the machine say."""

    @property
    def kernel_spec(self):
        if self._kernel_spec is None:
            from ipykernel.kernelspec import RESOURCES, get_kernel_dict
            from jupyter_client.kernelspec import KernelSpec

            self._kernel_spec = KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())
        return self._kernel_spec


def execute(notebook: Path, output: Path, parameters: dict, start_timeout: float = 120) -> None:
    """Run ``notebook`` with ``parameters`` on the current interpreter's kernel; the executed copy goes to
    ``output`` (written also when a cell fails).

    Raises:
        papermill.PapermillExecutionError: a cell raised (``.ename``, ``.evalue``, ``.cell_index``).
    """
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_manager_class=CurrentPythonKernelManager,
        progress_bar=False, start_timeout=start_timeout,
    )


@dataclass
class LockOutcome:
    """One lock's result: ``status`` is ``rendered``, ``skipped`` or ``failed``; ``run_id`` the final run
    (for ``skipped``, the finished one found); ``notebook`` the executed notebook; ``message`` one line."""

    lock: str
    status: str
    run_id: str | None = None
    notebook: Path | None = None
    message: str = ""
    seconds: float = 0.0


@dataclass
class ReplaySummary:
    """All outcomes of a batch, with counts and the exit code (1 if any lock failed, else 0)."""

    outcomes: list[LockOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0

    def line(self) -> str:
        return f"{self.count('rendered')} rendered, {self.count('skipped')} skipped, {self.count('failed')} failed"


def _finished_final(client, experiment_id: str, final_spec_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.final_spec_id = '{final_spec_id}' and "
                              "tags.stage = 'final' and attributes.status = 'FINISHED'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _attempt_run(client, experiment_id: str, attempt_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.attempt_id = '{attempt_id}'", max_results=1)
    return runs[0] if runs else None


def _record_failure_without_run(plan: FinalPlan, attempt_id: str, error: BaseException, uri: str) -> str:
    """A FAILED final run for a lock whose notebook failed before its render made a run."""
    tags = {"stage": "final", "preset": plan.request.final_preset, "attempt_id": attempt_id, **plan.tags}
    run = RenderRun.start({}, tags, f"final: {plan.lock.name} (failed before rendering)", uri)
    run.fail(error)
    return run.run_id


def replay(
    locks: list[str] | None = None,
    *,
    final_preset: str | None = None,
    mode: str = "fresh",
    strength: float = DEFAULT_STRENGTH,
    frame_index: int = 0,
    seed: int | None = None,
    steps: int | None = None,
    width: int | None = None,
    height: int | None = None,
    num_frames: int | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    out_dir: str | Path = "outputs/replay",
    notebook: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    report: Callable[[str], None] = print,
) -> ReplaySummary:
    """Render each lock on the final model through the final-render notebook.

    Args:
        locks: lock names; None renders every lock in the store (oldest first).
        final_preset: the final model; None: :data:`DEFAULT_FINAL` for the mode.
        mode, strength, frame_index, seed, steps, width, height, num_frames: the transfer and its settings, as the
            notebook's parameters (:class:`wanflow.transfer.FinalRequest`); the same for every lock.
        force: render locks that already have a FINISHED final with the same ``final_spec_id``.
        tracking_uri: the store with the locks; the finals go there too.
        out_dir: each attempt writes ``<out_dir>/<lock>/<UTC time>-<attempt>/`` (files, ``inputs/``, the executed
            ``02_render.ipynb``).
        notebook: the final-render notebook (default :data:`NOTEBOOK`).
        device, dtype: where the final model runs.
        report: called with one line per lock as it ends (default: print).

    Returns:
        :class:`ReplaySummary`; a failing lock is recorded (run FAILED, notebook attached) and the batch goes on.

    Raises:
        TransferError: the request is bad for every lock (mode, preset, strength, settings, a frame past every
            lock's last frame), before any notebook runs.
        LockError: a named lock does not exist, before any notebook runs.
        FileNotFoundError: no notebook at ``notebook``.
        ValueError: ``notebook`` is not a Jupyter notebook, or ``device`` / ``dtype`` is unknown or not on this
            machine, before any notebook runs.
        PermissionError: ``out_dir`` cannot be written, before any notebook runs.
        wanflow.TrackingError: the store cannot be reached.
    """
    uri = resolve_tracking_uri(tracking_uri)
    notebook = Path(notebook) if notebook else NOTEBOOK
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook: {notebook} does not exist; pass --notebook PATH to 02_render.ipynb")
    try:
        nbformat.read(notebook, as_version=4)
    except Exception as err:  # nbformat raises several kinds for a file that is not a notebook
        raise ValueError(f"notebook: {notebook} is not a Jupyter notebook ({type(err).__name__}); pass --notebook "
                         "PATH to 02_render.ipynb") from None
    LoadOptions(device=device, dtype=dtype).check()  # an unknown or absent device raises here, not per lock
    final_preset = final_preset or DEFAULT_FINAL.get(mode, "t2v-a14b")
    settings = dict(final_preset=final_preset, mode=mode, strength=strength, frame_index=frame_index, seed=seed,
                    num_inference_steps=steps, width=width, height=height, num_frames=num_frames)
    if locks is None:
        FinalRequest(lock_name="placeholder", **settings)  # bad settings raise before the store is read
        locks = list_locks(uri)["name"]
    names = list(dict.fromkeys(locks))  # a name given twice renders once
    if not names:
        report(f"no locks in {uri}: lock a draft first (`wanflow lock RUN_ID --name NAME`, see `wanflow history`)")
    requests = {name: FinalRequest(lock_name=name, **settings) for name in names}  # bad input raises here
    held = {name: get_lock(name, uri) for name in names}  # so does a missing lock
    if mode == "first-frame" and held and all(frame_index >= lock.spec.num_frames for lock in held.values()):
        longest = max(held.values(), key=lambda lock: lock.spec.num_frames)
        raise TransferError(f"frame_index: {frame_index} is past the last frame of every lock named (the longest, "
                            f"{longest.name!r}, has {longest.spec.num_frames} frames, 0..{longest.spec.num_frames - 1})")
    check_writable(Path(out_dir))  # and an output folder that cannot be written
    client, experiment_id = client_and_experiment(uri)
    for run_id, why in end_orphaned_runs(uri, ended_by="wanflow replay"):
        report(f"{'killed':8s} orphaned run {run_id}: {why}")
    summary = ReplaySummary()
    for name in names:
        request, lock = requests[name], held[name]
        plan = FinalPlan(request, lock)
        done = None if force else _finished_final(client, experiment_id, plan.final_spec_id)
        if done is not None:
            outcome = LockOutcome(name, "skipped", done.info.run_id,
                                  message=f"final run {done.info.run_id} has final_spec_id {plan.final_spec_id}")
        else:
            outcome = _render_one(plan, uri, Path(out_dir), notebook, device, dtype, client, experiment_id)
        summary.outcomes.append(outcome)
        report(f"{outcome.status:8s} {name}: {outcome.message}")
    report(summary.line())
    return summary


def _render_one(plan: FinalPlan, uri: str, out_dir: Path, notebook: Path, device: str, dtype: str, client,
                experiment_id: str) -> LockOutcome:
    request = plan.request
    attempt_id = uuid.uuid4().hex
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = (out_dir / safe_name(plan.lock.name) / f"{stamp}-{attempt_id[:8]}").resolve()
    executed = folder / NOTEBOOK_ARTIFACT
    parameters = {
        "lock_name": plan.lock.name, "final_preset": request.final_preset, "transfer_mode": request.mode,
        "strength": float(request.strength), "frame_index": int(request.frame_index), "seed": request.seed,
        "steps": request.num_inference_steps, "width": request.width, "height": request.height,
        "num_frames": request.num_frames, "tracking_uri": uri, "output_dir": str(folder), "device": device,
        "dtype": dtype, "attempt_id": attempt_id,
    }
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        execute(notebook, executed, parameters)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # PapermillExecutionError, or the kernel died (e.g. killed for memory)
        error = err
    seconds = time.perf_counter() - started
    run = _attempt_run(client, experiment_id, attempt_id)
    if run is None:
        error = error or RuntimeError("the notebook finished without logging a run")
        run_id = _record_failure_without_run(plan, attempt_id, error, uri)
    else:
        run_id = run.info.run_id
        if error is None and run.info.status != "FINISHED":
            error = RuntimeError(f"run {run_id} ended {run.info.status}")
        if run.info.status == "RUNNING":  # the kernel died mid-render (papermill has shut it down): end it here
            RenderRun(client, run_id, uri).fail(error)
            shutil.rmtree(staging_folder(folder, run_id), ignore_errors=True)
    if executed.is_file():
        client.log_artifact(run_id, str(executed))
    if error is not None:
        reason = error_message(error).strip()
        reason = reason.splitlines()[0] if reason else type(error).__name__
        attached = "notebook attached" if executed.is_file() else "no notebook: it did not start"
        return LockOutcome(plan.lock.name, "failed", run_id, executed, f"{reason} (run {run_id} FAILED, {attached})",
                           seconds)
    return LockOutcome(plan.lock.name, "rendered", run_id, executed, f"final run {run_id} ({seconds:.1f} s)", seconds)


def attach_notebook(run_id: str, path: str | Path, tracking_uri: str | None = None) -> None:
    """Log an executed notebook at the root of ``run_id`` (for a ``papermill`` run made by hand; ``replay`` does
    this itself). The run's ``final.json`` in the notebook's output folder names the run id."""
    client, _ = client_and_experiment(tracking_uri)
    client.log_artifact(run_id, str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m wanflow.replay ...``: the same as ``wanflow replay ...``."""
    from wanflow.cli import main as cli_main

    return cli_main(["replay", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
