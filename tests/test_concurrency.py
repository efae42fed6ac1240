"""Several processes rendering into one SQLite store at once, from its very first use (schema migration, the
experiments), lose nothing: every run FINISHED with all its params, metrics, tags and root artifacts.

Real processes, released together once each has imported everything, so their first writes meet. Before the
store lock in :func:`wanflow.tracking.client_and_experiment`, most of them failed at first use with MLflow's
migration racing itself ("table _alembic_tmp_... already exists", "duplicate column name", ...).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

import wanflow
from wanflow import tracking
from wanflow.artifacts import local_artifact_dir
from wanflow.spec import RenderSpec

PROCESSES, RENDERS = 4, 3
#: One writer process: imports everything, says it is ready, waits for the go file, renders RENDERS specs.
WORKER = """
import sys, time
from pathlib import Path
import wanflow.rendering, wanflow.tracking
from wanflow.spec import RenderSpec
store, name, folder, renders = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.002)
for i in range(renders):
    spec = RenderSpec(preset="tiny-ti2v", prompt=f"worker {name} render {i}", seed=i, num_inference_steps=2,
                      num_frames=5)
    wanflow.rendering.render(spec, out_dir=folder / f"{name}-{i}", tracking_uri=store, progress=False)
"""


def test_processes_rendering_into_one_fresh_store_lose_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'shared' / 'mlruns' / 'mlflow.db'}"
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 4 processes on a few cores: no thread oversubscription
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, store, f"w{n}", str(tmp_path), str(RENDERS)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for n in range(PROCESSES)]
    try:
        # While they import: the keys one render logs, from a render alone in its own store (it also builds the
        # tiny model the workers load once they are released).
        alone = f"sqlite:///{tmp_path / 'alone' / 'mlflow.db'}"
        reference = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt="alone", seed=0, num_inference_steps=2,
                                              num_frames=5),
                                   out_dir=tmp_path / "alone-out", tracking_uri=alone, progress=False)
        expected = MlflowClient(alone).get_run(reference.run_id).data
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("ready-*"))) < PROCESSES:
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "workers did not start"
            time.sleep(0.01)
        assert not Path(store.removeprefix("sqlite:///")).exists()  # the race starts at the store's first use
        ready = time.monotonic() - started
        (tmp_path / "go").touch()
        outputs = [w.communicate(timeout=120)[0] for w in workers]
    finally:
        for worker in workers:  # released or not, none outlives the test
            if worker.poll() is None:
                worker.kill()
    seconds = time.monotonic() - started
    assert [w.returncode for w in workers] == [0] * PROCESSES, "\n".join(outputs)

    client = MlflowClient(store)
    assert [e.name for e in client.search_experiments()].count("wanflow") == 1
    experiment_id = client.get_experiment_by_name("wanflow").experiment_id
    runs = client.search_runs([experiment_id], max_results=100)
    assert Counter(r.info.status for r in runs) == {"FINISHED": PROCESSES * RENDERS}
    prompts = {f"worker w{n} render {i}" for n in range(PROCESSES) for i in range(RENDERS)}
    assert {r.data.params["prompt"] for r in runs} == prompts
    for run in runs:
        assert set(run.data.params) == set(expected.params)
        assert set(run.data.metrics) == set(expected.metrics)
        assert set(run.data.tags) == set(expected.tags)
        assert {p.name for p in local_artifact_dir(run.info.artifact_uri).iterdir()} == set(tracking.ROOT_ARTIFACTS)
    database = store.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        leftovers = connection.execute("select name from sqlite_master where name like '_alembic_tmp%'").fetchall()
    assert not leftovers
    print(f"\n{PROCESSES} processes x {RENDERS} renders into one fresh store: {seconds:.1f} s "
          f"({ready:.1f} s of it importing)")


def test_writes_are_retried_only_while_the_database_is_locked(monkeypatch):
    """:func:`wanflow.tracking.retry_locked`: "database is locked" (MLflow's TEMPORARILY_UNAVAILABLE) is retried
    with backoff up to WRITE_ATTEMPTS times; any other error is raised at once."""
    monkeypatch.setattr(tracking, "WRITE_BACKOFF_S", 0.001)
    calls = []

    def locked_twice(value):
        calls.append(value)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked", TEMPORARILY_UNAVAILABLE)
        return value

    assert tracking.retry_locked(locked_twice, "ok") == "ok" and len(calls) == 3

    def always_locked():
        calls.append(None)
        raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    calls.clear()
    with pytest.raises(MlflowException, match="locked"):
        tracking.retry_locked(always_locked)
    assert len(calls) == tracking.WRITE_ATTEMPTS

    def bad_value():
        calls.append(None)
        raise MlflowException("bad", INVALID_PARAMETER_VALUE)

    calls.clear()
    with pytest.raises(MlflowException, match="bad"):
        tracking.retry_locked(bad_value)
    assert len(calls) == 1
