"""A run's root artifacts as local files: the path itself on a local store, a download into a folder otherwise.

The studio's thumbnails and the compare view read ``preview.gif`` and ``contact_sheet.png`` of many runs; on the
project's default store (SQLite with artifacts under ``mlruns/artifacts``) they are already on disk and copying
them would only cost time. Remote stores (a tracking server, S3) go through ``mlflow.artifacts``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

#: MLflow's switch for the "Downloading artifacts" bar it draws on every download, even of one small file.
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class ArtifactMissingError(FileNotFoundError):
    """The run has no artifact of that name (e.g. a FAILED render has no ``preview.gif``)."""


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder behind a ``file:`` artifact URI (or a plain path), else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # plain path (or C:\ on Windows)
        return Path(artifact_uri)
    return None


@contextlib.contextmanager
def quiet_downloads():
    """MLflow downloads inside this block draw no progress bar (``$MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is
    ``false`` for its duration and restored after). wanflow downloads single small files (a spec, a draft video),
    where the bar is noise in a replay's log."""
    previous = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = previous


def run_artifact(artifact_uri: str, name: str, folder: str | os.PathLike | None = None) -> Path:
    """The local path of the root artifact ``name`` (e.g. ``preview.gif``) of the run whose artifact root is
    ``artifact_uri`` (``Run.info.artifact_uri``).

    Args:
        artifact_uri: the run's artifact root (``file:///...``, ``mlflow-artifacts:/...``, ``s3://...``).
        name: file name at the root.
        folder: where to download to when the store is remote (default: a new temporary folder).

    Raises:
        ArtifactMissingError: no such artifact.
    """
    local = local_artifact_dir(artifact_uri)
    if local is not None:
        path = local / name
        if not path.is_file():
            raise ArtifactMissingError(f"artifact: {name} is not among the run's artifacts ({local})")
        return path
    return download(artifact_uri, name, folder)


def download(artifact_uri: str, name: str, folder: str | os.PathLike | None = None) -> Path:
    """Copy the root artifact ``name`` of the run whose artifact root is ``artifact_uri`` into ``folder`` (default:
    a new temporary folder), from any store, without MLflow's progress bar; returns the copy's path.

    Raises:
        ArtifactMissingError: no such artifact, or the store cannot be read.
    """
    from mlflow.artifacts import download_artifacts

    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        with quiet_downloads():
            return Path(download_artifacts(artifact_uri=f"{artifact_uri.rstrip('/')}/{name}",
                                           dst_path=None if folder is None else str(folder)))
    except Exception as err:
        raise ArtifactMissingError(f"artifact: cannot read {name} from {artifact_uri}: {err}") from err
