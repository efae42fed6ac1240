"""Drafts and their finals side by side: settings that differ, metrics, a keyframe grid, the previews, and the
MLflow UI link that opens the same runs in its Compare view. Used by ``wanflow compare`` and
``notebooks/03_compare.ipynb``.

Lineage (written by the replay): a final run carries the tags ``stage=final``, ``lock_name=<lock>``,
``draft_run_id=<draft run id>`` and ``transfer=<fresh|first-frame|draft-v2v>``; a locked draft carries
``lock=<name>``. A lock name therefore resolves to its draft and every FINISHED final whose ``draft_run_id`` is
that draft.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wanflow.artifacts import ArtifactMissingError, run_artifact
from wanflow.media import check_writable
from wanflow.tracking import client_and_experiment

#: Where ``wanflow ui`` serves the MLflow UI by default.
DEFAULT_UI = "http://127.0.0.1:5000"
#: MLflow run ids are 32 lowercase hex digits.
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
#: Spec fields shown in the settings table (in this order), then the lineage tags.
SETTING_COLUMNS = ("preset", "prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale",
                   "guidance_scale_2", "flow_shift", "width", "height", "num_frames", "fps", "image", "video",
                   "strength")
LINEAGE_COLUMNS = ("stage", "lock", "lock_name", "transfer", "transfer_strength", "transfer_frame", "draft_run_id")


class CompareError(ValueError):
    """Nothing to compare: an unknown lock or run id (the message names it)."""


@dataclass(frozen=True)
class ComparedRun:
    """One run in a comparison: its id, experiment, status, stage, label, params, metrics, tags and artifact root."""

    run_id: str
    experiment_id: str
    status: str
    stage: str
    label: str
    params: dict
    metrics: dict
    tags: dict
    artifact_uri: str


@dataclass
class Comparison:
    """The result of :func:`compare`: the runs (draft first, then its finals, oldest first), a table of the
    settings that differ (one row per run, indexed by label), a table of metrics, the keyframe grid PNG (None if
    no run has a contact sheet), each run's preview gif (label -> path; runs without one are left out) and the
    MLflow UI's Compare link."""

    runs: list[ComparedRun]
    settings: pd.DataFrame
    metrics: pd.DataFrame
    grid: Path | None
    previews: dict[str, Path] = field(default_factory=dict)
    ui_url: str = ""

    def previews_html(self, width: int = 256) -> str:
        """The previews side by side as one HTML block (gifs inlined as base64; each a few hundred kB at most)."""
        cells = []
        for label, path in self.previews.items():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            cells.append(
                f"<figure style='margin:4px'><img src='data:image/gif;base64,{data}' style='width:{width}px'>"
                f"<figcaption style='font-size:small'>{html.escape(label)}</figcaption></figure>"
            )
        return f"<div style='display:flex;flex-wrap:wrap'>{''.join(cells)}</div>"


def _label(run) -> str:
    tags = run.data.tags
    stage = tags.get("stage", "run")
    what = f"final:{tags['transfer']}" if stage == "final" and tags.get("transfer") else stage
    lock = f" {tags['lock']}" if tags.get("lock") else ""
    return f"{what}{lock} {tags.get('preset', '?')} {run.info.run_id[:8]}"


def _to_compared(run) -> ComparedRun:
    return ComparedRun(
        run_id=run.info.run_id, experiment_id=run.info.experiment_id, status=run.info.status,
        stage=run.data.tags.get("stage", ""), label=_label(run), params=dict(run.data.params),
        metrics=dict(run.data.metrics), tags=dict(run.data.tags), artifact_uri=run.info.artifact_uri,
    )


def resolve_runs(targets: list[str] | str, tracking_uri: str | None = None) -> list[ComparedRun]:
    """The runs to compare, in order and without repeats.

    Args:
        targets: lock names and/or run ids (a string is split on whitespace and commas). A lock name gives
            its draft and every FINISHED final whose ``draft_run_id`` is that draft (oldest first); a run id
            gives that run. Empty: the most recently locked draft and its finals.

    Raises:
        CompareError: an unknown lock or run id, or empty ``targets`` with no lock in the store.
        wanflow.TrackingError: the store cannot be reached.
    """
    from wanflow.locks import LOCK_TAG, LOCKED_AT_TAG

    if isinstance(targets, str):
        targets = [t for t in re.split(r"[\s,]+", targets) if t]
    client, experiment_id = client_and_experiment(tracking_uri)
    if not targets:
        locked = client.search_runs([experiment_id], filter_string=f"tags.{LOCK_TAG} != ''", max_results=5000)
        if not locked:
            raise CompareError("targets: no locks in the store yet; give run ids, or lock a draft first "
                               "(`wanflow lock RUN_ID --name NAME`)")
        newest = max(locked, key=lambda r: r.data.tags.get(LOCKED_AT_TAG, ""))
        targets = [newest.data.tags[LOCK_TAG]]

    found: dict[str, object] = {}
    for target in targets:
        runs = _runs_of_target(client, experiment_id, target)
        for run in runs:
            found.setdefault(run.info.run_id, run)
    return [_to_compared(run) for run in found.values()]


def _runs_of_target(client, experiment_id: str, target: str) -> list:
    from wanflow.locks import LOCK_TAG, NAME_PATTERN

    if RUN_ID_PATTERN.match(target):
        try:
            return [client.get_run(target)]
        except Exception:
            pass  # maybe a lock whose name looks like a run id
    if NAME_PATTERN.match(target):
        drafts = client.search_runs([experiment_id], filter_string=f"tags.{LOCK_TAG} = '{target}'")
        if drafts:
            draft = drafts[0]
            finals = client.search_runs(
                [experiment_id],
                filter_string=f"tags.draft_run_id = '{draft.info.run_id}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time ASC"], max_results=1000,
            )
            return [draft, *finals]
    raise CompareError(f"targets: {target!r} is neither a lock (`wanflow locks`) nor a run id "
                       "(`wanflow history`) in this store")


def _coerce(value: str):
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def settings_table(runs: list[ComparedRun], only_different: bool = True) -> pd.DataFrame:
    """Spec fields and lineage tags, one row per run (index: label). With ``only_different`` and two or more
    runs, only the columns whose values differ between runs are kept (``stage`` always)."""
    rows = {}
    for run in runs:
        row = {name: _coerce(run.params[name]) for name in SETTING_COLUMNS if name in run.params}
        row.update({name: run.tags[name] for name in LINEAGE_COLUMNS if name in run.tags})
        rows[run.label] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if only_different and len(runs) > 1:
        keep = [c for c in table.columns if c == "stage" or table[c].astype(str).nunique(dropna=False) > 1]
        table = table[keep]
    return table


def metrics_table(runs: list[ComparedRun]) -> pd.DataFrame:
    """Every metric of every run, one row per run (index: label), columns sorted; NaN where a run lacks one."""
    table = pd.DataFrame.from_dict({run.label: run.metrics for run in runs}, orient="index")
    return table.reindex(sorted(table.columns), axis=1)


def compare_url(runs: list[ComparedRun], base: str = DEFAULT_UI) -> str:
    """The MLflow UI's Compare Runs page for ``runs``. Same form as the UI's own route in MLflow 3.x
    (``getCompareRunPageRoute``: ``/compare-runs?runs=<JSON list>&experiments=<JSON list>``, the experiments
    de-duplicated and sorted), behind the hash router: ``<base>/#/compare-runs?...``."""
    run_ids = json.dumps([run.run_id for run in runs], separators=(",", ":"))
    experiments = json.dumps(sorted({run.experiment_id for run in runs}), separators=(",", ":"))
    return f"{base.rstrip('/')}/#/compare-runs?runs={run_ids}&experiments={experiments}"


def keyframe_grid(runs: list[ComparedRun], path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path | None:
    """Stack the runs' contact sheets vertically, each under a label bar (its label), into one PNG.

    Sheets of different widths are left-aligned on a dark background. Runs without ``contact_sheet.png`` are
    skipped; returns None if none has one. ``folder`` receives downloads from remote stores.
    """
    from PIL import Image, ImageDraw

    from wanflow.media import atomic_path

    sheets = []
    for run in runs:
        try:
            where = None if folder is None else Path(folder) / run.run_id
            sheets.append((run.label, Image.open(run_artifact(run.artifact_uri, "contact_sheet.png", where))))
        except ArtifactMissingError:
            continue
    if not sheets:
        return None
    bar = 18
    width = max(sheet.width for _, sheet in sheets)
    height = sum(sheet.height + bar for _, sheet in sheets)
    grid = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    y = 0
    for label, sheet in sheets:
        draw.text((4, y + 3), label, fill=(255, 255, 255))
        grid.paste(sheet.convert("RGB"), (0, y + bar))
        y += sheet.height + bar
        sheet.close()
    with atomic_path(Path(path)) as temp:
        grid.save(temp, format="PNG")
    return Path(path)


def compare(
    targets: list[str] | str = (),
    tracking_uri: str | None = None,
    out_dir: str | os.PathLike | None = None,
    ui_base: str = DEFAULT_UI,
) -> Comparison:
    """Resolve ``targets`` (see :func:`resolve_runs`) and build the comparison: tables, the keyframe grid
    written to ``out_dir/keyframes.png`` (default ``outputs/compare-<UTC time>/``), the previews, the UI link.

    Raises:
        CompareError, wanflow.TrackingError: as :func:`resolve_runs`.
        PermissionError: ``out_dir`` cannot be created or written (the message names ``out_dir``).
    """
    runs = resolve_runs(list(targets) if not isinstance(targets, str) else targets, tracking_uri)
    if out_dir is None:
        out_dir = Path("outputs") / f"compare-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    out_dir = Path(out_dir)
    check_writable(out_dir)
    previews = {}
    for run in runs:
        try:
            previews[run.label] = run_artifact(run.artifact_uri, "preview.gif", out_dir / "artifacts" / run.run_id)
        except ArtifactMissingError:
            continue
    grid = keyframe_grid(runs, out_dir / "keyframes.png", out_dir / "artifacts")
    return Comparison(runs=runs, settings=settings_table(runs), metrics=metrics_table(runs), grid=grid,
                      previews=previews, ui_url=compare_url(runs, ui_base))
