"""MLflow: one run per render, and the render history as a pandas DataFrame.

The store: ``--tracking-uri`` / ``tracking_uri=``, else ``$MLFLOW_TRACKING_URI``, else the project's default,
``sqlite:///mlruns/mlflow.db`` under the current folder with artifacts in ``mlruns/artifacts`` (a SQLite store,
not the file store that MLflow >= 3.13 refuses without ``MLFLOW_ALLOW_FILE_STORE``; ``shared/RESEARCH.md`` §3).

Runs are written through ``MlflowClient`` (explicit run ids, no global active run), so batch code and several
renders in one process never mix up runs. A run is created before the render starts and always ends: FINISHED
with its files, or FAILED with the error as a tag and ``error.txt``.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from wanflow.exceptions import TrackingError

#: The experiment every render goes to, unless ``$WANFLOW_EXPERIMENT`` names another.
EXPERIMENT = "wanflow"
#: The artifacts at the run's root, the only ones MLflow's Compare Runs page shows side by side.
ROOT_ARTIFACTS = ("video.mp4", "preview.gif", "contact_sheet.png", "spec.json")


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


def client_and_experiment(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """An ``MlflowClient`` for the store and the id of the wanflow experiment (created on first use, with its
    artifacts beside a SQLite database).

    Raises:
        TrackingError: the store cannot be reached (e.g. a tracking server that is down).
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    name = os.environ.get("WANFLOW_EXPERIMENT", EXPERIMENT)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return client, experiment.experiment_id
        try:
            return client, client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException:  # created by a concurrent process in the meantime
            return client, client.get_experiment_by_name(name).experiment_id
    except MlflowException as err:
        raise TrackingError(f"tracking_uri: cannot use the MLflow store at {uri}: {err.message[:300]}") from err
    except Exception as err:  # connection errors surface as requests/urllib3 exceptions
        raise TrackingError(f"tracking_uri: cannot reach the MLflow store at {uri}: {err}") from err


def run_name(prompt: str, stage: str) -> str:
    """A readable run name from the prompt: letters, digits, spaces and ``-`` only, at most 48 characters."""
    words = re.sub(r"[^\w\- ]+", " ", prompt, flags=re.UNICODE)
    words = re.sub(r"\s+", " ", words).strip()[:48].strip()
    return f"{stage}: {words or 'untitled'}"


class RenderRun:
    """The MLflow run of one render: created RUNNING by :meth:`start`, ended by :meth:`finish` or :meth:`fail`."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str):
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri

    @classmethod
    def start(cls, params: dict[str, str], tags: dict[str, str], name: str, tracking_uri: str | None = None) -> "RenderRun":
        """Create the run with its params (the spec's fields) and tags.

        Raises:
            TrackingError: the store cannot be reached or written.
        """
        client, experiment_id = client_and_experiment(tracking_uri)
        try:
            run = client.create_run(experiment_id, tags=tags, run_name=name)
        except Exception as err:
            raise TrackingError(f"tracking_uri: cannot create a run in {client.tracking_uri}: {err}") from err
        self = cls(client, run.info.run_id, client.tracking_uri)
        try:
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        except BaseException as err:
            self.fail(err)
            raise
        return self

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
        """Log metrics, tags and each file at the run's root, then end the run FINISHED. Returns the seconds
        logging took, which is also logged as the metric ``log_s``."""
        started = time.perf_counter()
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v],  # drop NaN
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        seconds = time.perf_counter() - started
        self.client.log_metric(self.run_id, "log_s", seconds, now, 0)
        self.client.set_terminated(self.run_id, "FINISHED")
        return seconds

    def fail(self, error: BaseException) -> None:
        """End the run FAILED (KILLED for Ctrl-C) with the error as a tag and its traceback as ``error.txt``.
        Never raises: a failure to record the failure must not hide the original error."""
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            message = f"{type(error).__name__}: {error}"
            self.client.set_tag(self.run_id, "error", message[:4900])
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "error.txt"
                path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
                self.client.log_artifact(self.run_id, str(path))
        except Exception:
            pass
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception:
            pass


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
