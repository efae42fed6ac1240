"""Locks: drafts chosen for final rendering, kept in MLflow as tags on the draft's run.

Why tagged runs and not the Prompt Registry: a lock must carry the draft's *whole render* (prompt, every setting,
seed, and the draft video itself, which ``first-frame`` and ``draft-v2v`` finals start from). All of that already
lives in the draft's run; a tag ``lock=<name>`` on it adds the choice without copying anything, travels with the
store (export/import, a tracking server), and shows in the MLflow UI's runs table as a column you can filter on
(``tags.lock != ''``). The Prompt Registry versions prompt *text* only and would need a second pointer to the run.

One run holds at most one lock name; a name belongs to at most one run (re-locking a name moves it, with
``force=True``).
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wanflow.artifacts import download, quiet_downloads
from wanflow.spec import RenderSpec
from wanflow.tracking import client_and_experiment

LOCK_TAG = "lock"
LOCKED_AT_TAG = "locked_at"
#: Lock names are safe in file names, MLflow filter strings and shell commands.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LockError(ValueError):
    """A lock operation on bad input; the message names the field (``name`` or ``run_id``)."""


@dataclass(frozen=True)
class Lock:
    """A locked draft: its name, the draft's run id, the draft's spec and where its artifacts are."""

    name: str
    run_id: str
    spec: RenderSpec
    locked_at: str
    artifact_uri: str

    def download(self, artifact: str, folder: str | Path) -> Path:
        """Copy one of the draft's root artifacts (e.g. ``video.mp4``) into ``folder``; returns its path.

        Raises:
            wanflow.artifacts.ArtifactMissingError: the draft has no such artifact.
        """
        return download(self.artifact_uri, artifact, folder)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid lock name, else raise :class:`LockError` saying what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise LockError(
            f"name: {name!r} is not a valid lock name; use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def _runs_with_lock(client, experiment_id: str, name: str):
    return client.search_runs([experiment_id], filter_string=f"tags.{LOCK_TAG} = '{name}'")


def _locked_runs(name: str, tracking_uri: str | None):
    """The client and the run(s) holding lock ``name``; raises :class:`LockError` if there are none."""
    check_name(name)
    client, experiment_id = client_and_experiment(tracking_uri)
    runs = _runs_with_lock(client, experiment_id, name)
    if not runs:
        raise LockError(f"name: no lock called {name!r}; see `wanflow locks`")
    return client, runs


def lock(run_id: str, name: str, tracking_uri: str | None = None, force: bool = False) -> Lock:
    """Lock the finished render ``run_id`` under ``name``.

    Raises:
        LockError: bad name; no such run; the run did not finish; the run already holds another lock;
            the name is taken by another run (pass ``force=True`` to move it).
        wanflow.TrackingError: the store cannot be reached.
    """
    check_name(name)
    client, experiment_id = client_and_experiment(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise LockError(f"run_id: no run {run_id!r} in {client.tracking_uri}; see `wanflow history`") from None
    if run.info.status != "FINISHED":
        raise LockError(f"run_id: run {run_id} is {run.info.status}; only a finished render can be locked")
    current = run.data.tags.get(LOCK_TAG)
    if current and current != name:
        raise LockError(f"run_id: run {run_id} is already locked as {current!r}; unlock it first")
    holders = [r for r in _runs_with_lock(client, experiment_id, name) if r.info.run_id != run_id]
    if holders and not force:
        raise LockError(f"name: {name!r} already locks run {holders[0].info.run_id}; choose another name or force")
    for other in holders:
        client.delete_tag(other.info.run_id, LOCK_TAG)
        client.delete_tag(other.info.run_id, LOCKED_AT_TAG)
    client.set_tag(run_id, LOCK_TAG, name)
    client.set_tag(run_id, LOCKED_AT_TAG, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    return get_lock(name, tracking_uri)


def unlock(name: str, tracking_uri: str | None = None) -> str:
    """Remove the lock ``name``; returns the run id it was on.

    Raises:
        LockError: no lock of that name.
    """
    client, runs = _locked_runs(name, tracking_uri)
    for run in runs:
        client.delete_tag(run.info.run_id, LOCK_TAG)
        client.delete_tag(run.info.run_id, LOCKED_AT_TAG)
    return runs[0].info.run_id


def _spec_of(client, run) -> RenderSpec:
    with tempfile.TemporaryDirectory() as folder, quiet_downloads():
        path = client.download_artifacts(run.info.run_id, "spec.json", folder)
        return RenderSpec.load(path)


def get_lock(name: str, tracking_uri: str | None = None) -> Lock:
    """The lock called ``name``, with the draft's spec read from its ``spec.json``.

    Raises:
        LockError: no lock of that name.
    """
    client, runs = _locked_runs(name, tracking_uri)
    run = runs[0]
    return Lock(name=name, run_id=run.info.run_id, spec=_spec_of(client, run),
                locked_at=run.data.tags.get(LOCKED_AT_TAG, ""), artifact_uri=run.info.artifact_uri)


def list_locks(tracking_uri: str | None = None) -> pd.DataFrame:
    """All locks, oldest first (then by name): columns ``name``, ``run_id``, ``preset``, ``seed``, ``prompt``, ``locked_at``,
    ``artifact_uri`` (settings come from the run's params, so listing downloads nothing)."""
    client, experiment_id = client_and_experiment(tracking_uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.{LOCK_TAG} != ''", max_results=5000)
    rows = [
        {
            "name": run.data.tags[LOCK_TAG],
            "run_id": run.info.run_id,
            "preset": run.data.tags.get("preset"),
            "seed": run.data.params.get("seed"),
            "prompt": run.data.params.get("prompt"),
            "locked_at": run.data.tags.get(LOCKED_AT_TAG, ""),
            "artifact_uri": run.info.artifact_uri,
        }
        for run in runs
    ]
    columns = ["name", "run_id", "preset", "seed", "prompt", "locked_at", "artifact_uri"]
    return pd.DataFrame(rows, columns=columns).sort_values(["locked_at", "name"], kind="stable").reset_index(drop=True)
