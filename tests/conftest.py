"""Shared fixtures: offline, tiny models cached once per session, one MLflow store per test."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("WANFLOW_MODEL_DIR", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

PROMPT = "a red circle moving left on a blue background"


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """Tiny models are built into a per-session cache, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("wanflow-cache")
    os.environ["WANFLOW_CACHE"] = str(folder)
    yield folder


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def migrated_store_template(tmp_path_factory):
    """An empty SQLite store with MLflow's tables, made once per session (MLflow's migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def fresh_store(tmp_path, migrated_store_template):
    """Like ``store``, but a copy of an already migrated empty database (``tmp_path/mlruns/mlflow.db``): as fresh,
    without MLflow's seconds of schema migration."""
    import shutil

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(exist_ok=True)
    shutil.copy(migrated_store_template, db)
    return f"sqlite:///{db}"


@pytest.fixture
def red_image(tmp_path):
    """A 64x64 PNG: red disc on blue, the first frame for image-to-video."""
    yy, xx = np.mgrid[:64, :64]
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:] = (40, 80, 220)
    frame[(yy - 32) ** 2 + (xx - 40) ** 2 < 100] = (220, 40, 40)
    path = tmp_path / "first.png"
    Image.fromarray(frame).save(path)
    return path
