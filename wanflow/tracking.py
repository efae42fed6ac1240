"""MLflow: one run per render, and the render history as a pandas DataFrame.

The store: ``--tracking-uri`` / ``tracking_uri=``, else ``$MLFLOW_TRACKING_URI``, else the project's default,
``sqlite:///mlruns/mlflow.db`` under the current folder with artifacts in ``mlruns/artifacts`` (a SQLite store,
not the file store that MLflow >= 3.13 refuses without ``MLFLOW_ALLOW_FILE_STORE``; ``FACTS.md`` §3).

Runs are written through ``MlflowClient`` (explicit run ids, no global active run), so batch code and several
renders in one process never mix up runs. A run is created before the render starts and always ends: FINISHED
with its files, or FAILED with the error as a tag and ``error.txt``.

**Several writers on one SQLite store** (several renders, a replay, the UI, at once). SQLite allows one writer at
a time; MLflow's own session sets ``PRAGMA busy_timeout = 20000``, so a write waits up to 20 s for the lock. What
broke was the *first use* of a fresh store: every process ran MLflow's schema migration and created the
``Default`` experiment at the same time (``SqlAlchemyStore.__init__`` does both without a lock), which failed
with "table _alembic_tmp_... already exists", "duplicate column name", alembic version mismatches, and could
leave half-migrated tables behind. So, for a SQLite store:

- the store is opened, migrated and the ``wanflow`` experiment found or created under an exclusive file lock,
  ``<db>.lock`` beside the database (:mod:`filelock`), so one process migrates and the others wait;
- the database is switched once to write-ahead logging (``PRAGMA journal_mode=WAL``, a setting stored in the
  file): readers (the UI, ``wanflow history``) no longer block the writer nor it them. WAL needs the database on a
  local disk (not NFS), like SQLite's locking itself;
- a write that still fails with MLflow's "database is locked" (``TEMPORARILY_UNAVAILABLE``, after its 20 s) is
  retried :data:`WRITE_ATTEMPTS` times with backoff (:func:`retry_locked`): a render's record is worth a wait.

Many machines writing to one store need a tracking server (``mlflow server`` with a SQL database behind it) and
``--tracking-uri http://HOST:PORT``; a SQLite file is for one machine.

**Orphaned runs.** A render killed outright (SIGKILL, a preempted VM, the OOM killer) cannot end its run, which
would stay RUNNING. Each run records ``host``, ``pid`` (the process that renders) and ``heartbeat_at`` (UTC,
refreshed every :data:`HEARTBEAT_S` seconds while it renders). :func:`end_orphaned_runs` (run by ``wanflow
replay`` before it renders) ends a RUNNING run KILLED, with the tags ``error`` (why) and ``ended_by``, when its
process is gone (same host, no live process with that pid started before the run) or when its heartbeat is older
than :data:`STALE_AFTER_S` (any host). A render's files wait in a hidden staging folder
(:func:`staging_folder`) until its run is FINISHED; ending an orphan on its own host removes that folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, TypeVar

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE, ErrorCode
from mlflow.tracking import MlflowClient

from wanflow.exceptions import TrackingError

#: The experiment every render goes to, unless ``$WANFLOW_EXPERIMENT`` names another.
EXPERIMENT = "wanflow"
#: The artifacts at the run's root, the only ones MLflow's Compare Runs page shows side by side.
ROOT_ARTIFACTS = ("video.mp4", "preview.gif", "contact_sheet.png", "spec.json")
#: Seconds between a rendering process's ``heartbeat_at`` tags.
HEARTBEAT_S = 60.0
#: A RUNNING run whose last heartbeat is older than this (10 missed heartbeats) is orphaned, on any host.
STALE_AFTER_S = 600.0
#: Attempts of a write that MLflow reports as "database is locked", and the first wait between them (doubling).
WRITE_ATTEMPTS = 4
WRITE_BACKOFF_S = 1.0
#: Seconds to wait for another process's first-use set-up of a SQLite store (schema migration) to finish.
INIT_LOCK_TIMEOUT_S = 300.0

T = TypeVar("T")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlruns/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"


#: Store URI schemes wanflow accepts: SQLite, a tracking server, or another SQL database MLflow supports.
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
#: Seconds to wait for a tracking server's ``/health`` before giving up (MLflow's own client retries for minutes).
PROBE_TIMEOUT = 5.0


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else :func:`default_tracking_uri`. A SQLite store's folder is created if missing.

    Raises:
        TrackingError: an unknown scheme, or a plain path / ``file:`` URI (the file store that MLflow >= 3.13
            refuses); the message says what to use instead.
    """
    uri = uri or default_tracking_uri()
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        raise TrackingError(
            f"tracking_uri: {uri!r} is a file store, which MLflow >= 3.13 refuses; use a SQLite store such as "
            "sqlite:///mlruns/mlflow.db, or a tracking server http://HOST:PORT"
        )
    if scheme not in SCHEMES:
        raise TrackingError(f"tracking_uri: unknown scheme {scheme!r} in {uri!r}; use one of: "
                            + ", ".join(f"{s}://" for s in SCHEMES))
    if scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"tracking_uri: cannot create {folder} for {uri} ({err.strerror})") from None
    return uri


def _probe_server(uri: str) -> None:
    """Fail fast when a tracking server does not answer (MLflow's client would retry for minutes)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        pass  # it answered: a server without /health, or behind auth; let MLflow's client report the details
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"tracking_uri: no MLflow server answers at {uri} ({reason}); start one with "
                            f"`mlflow server --host 127.0.0.1 --port PORT`, or check the SSH tunnel") from None


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


_WAL_SET: set[Path] = set()


def _use_wal(database: Path) -> None:
    """Switch the SQLite file to write-ahead logging once per process (stored in the file; a no-op when it is
    already WAL). Best effort: a database busy at this moment keeps its journal mode for now."""
    if database in _WAL_SET:
        return
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=10)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        _WAL_SET.add(database)
    except sqlite3.Error:
        pass


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold ``<db>.lock`` beside a SQLite store's database (nothing for other stores): the lock under which a
    store is first created and migrated, so processes that open a fresh store at once wait for one of them.

    Raises:
        TrackingError: the lock was not free within :data:`INIT_LOCK_TIMEOUT_S` seconds.
    """
    database = _sqlite_path(uri)
    if database is None:
        yield
        return
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{database}.lock", timeout=INIT_LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise TrackingError(f"tracking_uri: {database}.lock was held for more than {INIT_LOCK_TIMEOUT_S:.0f} s "
                            "by another process setting up the store; is one stuck?") from None


def retry_locked(call: Callable[..., T], *args, **kwargs) -> T:
    """``call(*args, **kwargs)``, retried when MLflow raises "database is locked" (its SQL store's
    ``TEMPORARILY_UNAVAILABLE``, after SQLite's own 20 s busy timeout): :data:`WRITE_ATTEMPTS` attempts in all,
    waiting :data:`WRITE_BACKOFF_S` seconds, then twice that, and so on. A failed SQLite write is rolled back, so
    a retry never writes twice. Any other error is raised at once; the last one is raised when attempts run out."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(TEMPORARILY_UNAVAILABLE) or attempt == WRITE_ATTEMPTS - 1:
                raise
            time.sleep(WRITE_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def client_and_experiment(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """An ``MlflowClient`` for the store and the id of the wanflow experiment (created on first use, with its
    artifacts beside a SQLite database). A SQLite store is opened under :func:`store_lock` and put in WAL mode
    (see the module's docstring), so processes that start on a fresh store together do not race its migration.

    Raises:
        TrackingError: the store cannot be reached (e.g. a tracking server that is down).
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    name = os.environ.get("WANFLOW_EXPERIMENT", EXPERIMENT)
    try:
        with store_lock(uri):
            if _sqlite_path(uri) is not None:
                _use_wal(_sqlite_path(uri))
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(name)  # opens (and on first use migrates) the store
            if experiment is not None:
                return client, experiment.experiment_id
            try:
                return client, retry_locked(client.create_experiment, name,
                                            artifact_location=_artifact_location(uri))
            except MlflowException:  # created by a process writing through another store lock (a server)
                return client, client.get_experiment_by_name(name).experiment_id
    except TrackingError:
        raise
    except MlflowException as err:
        raise TrackingError(f"tracking_uri: cannot use the MLflow store at {uri}: {err.message[:300]}") from err
    except Exception as err:  # connection errors surface as requests/urllib3 exceptions
        raise TrackingError(f"tracking_uri: cannot reach the MLflow store at {uri}: {err}") from err


def run_name(prompt: str, stage: str) -> str:
    """A readable run name from the prompt: letters, digits, spaces and ``-`` only, at most 48 characters."""
    words = re.sub(r"[^\w\- ]+", " ", prompt, flags=re.UNICODE)
    words = re.sub(r"\s+", " ", words).strip()[:48].strip()
    return f"{stage}: {words or 'untitled'}"


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def process_tags() -> dict[str, str]:
    """The tags that let a later process tell whether a run's renderer is still alive: ``host``, ``pid`` and
    ``heartbeat_at`` (now, UTC)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "heartbeat_at": _utc_now()}


def staging_folder(out_dir: str | os.PathLike, run_id: str) -> Path:
    """Where a logged render writes its files until its run is FINISHED: ``<out_dir>/.partial-<run_id>``, hidden
    and named so that nothing in it looks finished. The files are moved into ``out_dir`` after the run ends
    FINISHED; :func:`end_orphaned_runs` removes the folder of a run it ends."""
    return Path(out_dir) / f".partial-{run_id}"


def error_message(error: BaseException) -> str:
    """``Type: message`` of ``error``; for papermill's ``PapermillExecutionError`` the notebook cell's own error
    (its ``ename: evalue``), not papermill's banner and traceback."""
    if hasattr(error, "ename"):
        return f"{error.ename}: {error.evalue}"
    return f"{type(error).__name__}: {error}"


class RenderRun:
    """The MLflow run of one render: created RUNNING by :meth:`start`, ended by :meth:`finish` or :meth:`fail`.
    While it is RUNNING, a daemon thread refreshes its ``heartbeat_at`` tag every :data:`HEARTBEAT_S` seconds."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str):
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self._ended = threading.Event()

    @classmethod
    def start(cls, params: dict[str, str], tags: dict[str, str], name: str, tracking_uri: str | None = None) -> "RenderRun":
        """Create the run with its params (the spec's fields), ``tags`` and :func:`process_tags`, and start its
        heartbeat.

        Raises:
            TrackingError: the store cannot be reached or written.
        """
        client, experiment_id = client_and_experiment(tracking_uri)
        try:
            run = retry_locked(client.create_run, experiment_id, tags={**tags, **process_tags()}, run_name=name)
        except Exception as err:
            raise TrackingError(f"tracking_uri: cannot create a run in {client.tracking_uri}: {err}") from err
        self = cls(client, run.info.run_id, client.tracking_uri)
        try:
            retry_locked(client.log_batch, self.run_id, params=[Param(k, v) for k, v in params.items()])
        except BaseException as err:
            self.fail(err)
            raise
        threading.Thread(target=self._beat, name=f"heartbeat-{self.run_id[:8]}", daemon=True).start()
        return self

    def _beat(self) -> None:
        while not self._ended.wait(HEARTBEAT_S):
            try:
                self.client.set_tag(self.run_id, "heartbeat_at", _utc_now())
            except Exception:
                pass  # a missed heartbeat only matters after STALE_AFTER_S of them

    def earlier_render(self, tags: dict[str, str]) -> tuple[str, str] | None:
        """The oldest FINISHED run (other than this one) with the same ``spec_id``, ``device`` and ``dtype`` tags
        as ``tags`` that recorded ``frames_sha256``: ``(run_id, frames_sha256)``, or None."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        query = " and ".join(f"tags.{key} = '{tags[key]}'" for key in ("spec_id", "device", "dtype"))
        runs = self.client.search_runs([experiment_id], filter_string=f"{query} and attributes.status = 'FINISHED'",
                                       order_by=["attributes.start_time ASC"], max_results=50)
        for run in runs:
            if run.info.run_id != self.run_id and "frames_sha256" in run.data.tags:
                return run.info.run_id, run.data.tags["frames_sha256"]
        return None

    def finish(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> float:
        """Log each file at the run's root, then the metrics and tags in one batch, then end the run FINISHED.
        Returns the seconds copying the files took, which is also logged as the metric ``log_s``.

        The status is the last write: a run killed while logging stays RUNNING (until :func:`end_orphaned_runs`
        ends it KILLED), never FINISHED with files or metrics missing."""
        started = time.perf_counter()
        for path in files:
            retry_locked(self.client.log_artifact, self.run_id, str(path))
        seconds = time.perf_counter() - started
        now = int(time.time() * 1000)
        values = {**metrics, "log_s": seconds}
        retry_locked(
            self.client.log_batch, self.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v == v],  # drop NaN
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        self._ended.set()
        retry_locked(self.client.set_terminated, self.run_id, "FINISHED")
        return seconds

    def fail(self, error: BaseException) -> None:
        """End the run FAILED (KILLED for Ctrl-C) with the error as a tag and its traceback as ``error.txt``.
        Never raises: a failure to record the failure must not hide the original error."""
        self._ended.set()
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            retry_locked(self.client.set_tag, self.run_id, "error", error_message(error)[:4900])
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "error.txt"
                path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
                self.client.log_artifact(self.run_id, str(path))
        except Exception:
            pass
        try:
            retry_locked(self.client.set_terminated, self.run_id, status)
        except Exception:
            pass


def _process_alive(pid: int, started_before: float) -> bool:
    """Whether a live (not zombie) process ``pid`` runs on this machine that was started no later than
    ``started_before`` (epoch seconds, plus a second of clock slack): a pid reused by a newer process is dead."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started_before + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. access denied: it exists
        return True


def orphan_reason(run, now: float | None = None, host: str | None = None) -> str | None:
    """Why the RUNNING ``run`` (an ``mlflow.entities.Run``) is orphaned, or None if its renderer may be alive.

    The rule: on the host that made it (tag ``host`` = this host), orphaned as soon as no live process with its
    ``pid`` tag, started before the run, exists; on any host, orphaned when its ``heartbeat_at`` tag (else its
    start time) is more than :data:`STALE_AFTER_S` seconds old. ``now`` is epoch seconds (default: now), ``host``
    this machine's name (default: ``socket.gethostname()``)."""
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    tags, started = run.data.tags, run.info.start_time / 1000
    pid = tags.get("pid", "")
    if tags.get("host") == host and pid.isdigit() and not _process_alive(int(pid), started):
        return f"its process {pid} on {host} is gone"
    try:
        beat = dt.datetime.fromisoformat(tags["heartbeat_at"]).timestamp()
    except (KeyError, ValueError):
        beat = started
    if now - beat > STALE_AFTER_S:
        where = f" (process {pid} on {tags['host']})" if pid and tags.get("host") else ""
        return f"no heartbeat for {(now - beat) / 60:.0f} min{where}"
    return None


def end_orphaned_runs(tracking_uri: str | None = None, ended_by: str = "") -> list[tuple[str, str]]:
    """End every orphaned RUNNING run of the wanflow experiment KILLED (the rule: :func:`orphan_reason`), with
    the tags ``error`` (``orphaned: <why>``) and ``ended_by`` (``ended_by``, then this process and host), and remove
    its :func:`staging_folder` (and the render folder, if that leaves it empty) when it was made on this host.
    Returns ``(run_id, why)`` for each run ended.

    Raises:
        TrackingError: the store cannot be reached.
    """
    client, experiment_id = client_and_experiment(tracking_uri)
    me = f"{ended_by + ' ' if ended_by else ''}(process {os.getpid()} on {socket.gethostname()})"
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        why = orphan_reason(run)
        if why is None:
            continue
        retry_locked(client.log_batch, run.info.run_id, tags=[RunTag("error", f"orphaned: {why}"),
                                                              RunTag("ended_by", me)])
        retry_locked(client.set_terminated, run.info.run_id, "KILLED")
        out_dir = run.data.tags.get("out_dir")
        if out_dir and run.data.tags.get("host") == socket.gethostname():
            shutil.rmtree(staging_folder(out_dir, run.info.run_id), ignore_errors=True)
            with contextlib.suppress(OSError):  # the render's folder, if the staging folder was all it held
                Path(out_dir).rmdir()
        ended.append((run.info.run_id, why))
    return ended


def history(tracking_uri: str | None = None, max_results: int = 1000, stage: str | None = None) -> pd.DataFrame:
    """The renders in the store, newest first: one row per run.

    Columns: ``run_id``, ``status``, ``start_time`` (UTC), ``stage``, ``preset``, ``spec_id``, then every spec field
    (from the params: ``prompt``, ``seed``, ``num_inference_steps``, ...) and every metric (``denoise_s``,
    ``peak_memory_gib``, ...), and ``artifact_uri``. ``stage`` filters to ``draft`` or ``final``.

    Raises:
        TrackingError: the store cannot be reached.
    """
    if stage not in (None, "draft", "final"):
        raise ValueError(f"stage: {stage!r} is not one of draft, final")
    client, experiment_id = client_and_experiment(tracking_uri)
    query = f"tags.stage = '{stage}'" if stage else ""
    runs = client.search_runs([experiment_id], filter_string=query, max_results=max_results,
                              order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
            "stage": run.data.tags.get("stage"),
            "preset": run.data.tags.get("preset"),
            "spec_id": run.data.tags.get("spec_id"),
        }
        row.update(run.data.params)
        row.update(run.data.metrics)
        row["artifact_uri"] = run.info.artifact_uri
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("seed", "num_inference_steps", "width", "height", "num_frames", "fps"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("guidance_scale", "guidance_scale_2", "flow_shift"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _param_value_limit() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:  # pragma: no cover - moved in some MLflow version
        return 6000
    return int(MAX_PARAM_VAL_LENGTH)


#: MLflow's longest param value in characters (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``, 6000 in MLflow
#: 3.17). MLflow cuts a longer value itself, with a warning that prints the value's start to the log.
PARAM_VALUE_LIMIT = _param_value_limit()


def fit_params(params: dict[str, str], limit: int = PARAM_VALUE_LIMIT) -> tuple[dict[str, str], list[str]]:
    """``params`` with every value longer than ``limit`` characters cut to ``limit`` (ending in ``…``), and the
    names of the params cut, in order. The caller records the cut names (``wanflow.render``: the tag
    ``params_truncated`` and the full text as ``<name>.txt`` artifacts; the full spec is in ``spec.json``)."""
    fitted, cut = {}, []
    for name, value in params.items():
        if len(value) > limit:
            value = value[: limit - 1] + "…"
            cut.append(name)
        fitted[name] = value
    return fitted, cut
