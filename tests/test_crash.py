"""Crash-safe replay: a real ``wanflow replay`` process (and its papermill kernel) is killed with SIGKILL during
a render, between locks and while logging, and run again until it completes. At the end every lock has exactly
one FINISHED final, no run is RUNNING, the runs the kills orphaned are KILLED, and every ``video.mp4`` (or other
render file) in the output folders belongs to a FINISHED run.

The kill points are found by watching what the processes leave behind, with no hook in the library: a run
appearing RUNNING in the store, its artifacts appearing in the store, a notebook attached to a FINISHED run. To
kill *while logging* at a known point, the test holds SQLite's write lock (``BEGIN IMMEDIATE``) so that the
render, having copied its files into the store, waits at its first write of metrics.

Also, in-process: the orphan rule itself (which RUNNING runs :func:`wanflow.tracking.end_orphaned_runs` ends), the
heartbeat, and a kernel that dies alone (the replay ends its run FAILED).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

import wanflow
from wanflow.artifacts import local_artifact_dir
from wanflow.locks import lock
from wanflow.presets import get_preset
from wanflow.spec import RenderSpec
from wanflow.tiny import materialize
from wanflow.tracking import ROOT_ARTIFACTS, client_and_experiment, end_orphaned_runs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups and SIGKILL as on Linux")

FINAL = "tiny-t2v-a14b"
RENDER_FILES = {*ROOT_ARTIFACTS, "final.json"}


class Replay:
    """One ``python -m wanflow.replay`` process in its own session, its output in a log file."""

    def __init__(self, folder: Path, store: str, attempt: int):
        self.log = folder / f"replay-{attempt}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wanflow.replay", "--model", FINAL, "--tracking-uri", store,
                 "--out", str(folder / "out")],
                cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        """SIGKILL the replay and everything it started, at once: the kernel runs in a session of its own
        (jupyter_client starts it so), so each descendant's process group is killed, the kernel's first. A replay
        that has exited already (and shut its kernels down) is left alone."""
        if self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        groups = []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                groups.append(os.getpgid(child.pid))
        for group in [*reversed(groups), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.proc.wait(timeout=30)
        psutil.wait_procs(children, timeout=10)


@contextlib.contextmanager
def write_lock(store: str):
    """Hold the SQLite store's write lock: every other writer waits (MLflow's busy timeout is 20 s)."""
    connection = sqlite3.connect(store.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def wait_for(what: str, check, replay: Replay, timeout: float = 90.0, every: float = 0.2):
    """Poll ``check()`` until it returns something truthy; fail if the replay exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if replay.proc.poll() is not None:
            pytest.fail(f"replay exited ({replay.proc.returncode}) before {what}:\n{replay.output()}")
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}:\n{replay.output()}")


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A store with two locked tiny-ti2v drafts, ``hero`` and ``sunset``; the final preset's tiny weights are
    built here, so no kill lands while they are being written to the cache."""
    folder = tmp_path_factory.mktemp("crash")
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    for name, prompt in (("hero", "a red circle moving left"), ("sunset", "a yellow square growing")):
        draft = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=prompt, seed=1), out_dir=folder / name,
                               tracking_uri=store, progress=False)
        lock(draft.run_id, name, store)
    materialize(get_preset(FINAL))
    return folder, store


@pytest.fixture
def start_replay(locked):
    """``start_replay(attempt)`` starts a replay on the ``locked`` store; whatever still runs at the end is killed,
    kernels included, whether the test passed or not."""
    started = []

    def start(attempt: int) -> Replay:
        started.append(Replay(*locked, attempt))
        return started[-1]

    yield start
    for replay in started:
        replay.kill()


def test_replay_killed_at_each_point_ends_with_one_final_per_lock(locked, start_replay):
    folder, store = locked
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("wanflow").experiment_id

    def finals(name: str, status: str | None = None):
        query = f"tags.stage = 'final' and tags.lock_name = '{name}'"
        query += f" and attributes.status = '{status}'" if status else ""
        return client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])

    def artifacts(run) -> set[str]:
        folder = local_artifact_dir(run.info.artifact_uri)
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    started = time.monotonic()
    # 1. Killed during a render: hero's run has just started (the kernel is loading the model).
    first = start_replay(1)
    hero_1 = wait_for("hero's first render", lambda: finals("hero", "RUNNING"), first)[0]
    first.kill()
    assert client.get_run(hero_1.info.run_id).info.status == "RUNNING"  # orphaned

    # 2. Killed between locks: hero's final is FINISHED with its notebook attached, sunset's not started. Before
    #    rendering, this replay ended the orphan KILLED.
    second = start_replay(2)
    hero_2 = wait_for("hero's finished final with its notebook",
                      lambda: [r for r in finals("hero", "FINISHED") if "02_render.ipynb" in artifacts(r)], second)[0]
    second.kill()
    assert not finals("sunset")
    assert f"killed   orphaned run {hero_1.info.run_id}: its process" in second.output()
    hero_1 = client.get_run(hero_1.info.run_id)
    assert hero_1.info.status == "KILLED" and hero_1.data.tags["error"].startswith("orphaned: its process")
    assert hero_1.data.tags["ended_by"].startswith("wanflow replay (process")

    # 3. Killed while logging: sunset's files are in the store, its metrics and status not yet (the test holds
    #    the write lock). The files wait in the staging folder; none is in the output folder.
    third = start_replay(3)
    sunset_1 = wait_for("sunset's first render", lambda: finals("sunset", "RUNNING"), third)[0]
    with write_lock(store):
        wait_for("sunset's files in the store", lambda: set(ROOT_ARTIFACTS) <= artifacts(sunset_1), third,
                 every=0.05)
        time.sleep(0.3)
        third.kill()
    assert "skipped  hero" in third.output()
    assert client.get_run(sunset_1.info.run_id).info.status == "RUNNING"
    staging = Path(sunset_1.data.tags["out_dir"]) / f".partial-{sunset_1.info.run_id}"
    assert (staging / "video.mp4").is_file() and not (staging.parent / "video.mp4").exists()

    # 4. Run to the end.
    fourth = start_replay(4)
    assert fourth.proc.wait(timeout=120) == 0, fourth.output()
    assert fourth.output().strip().splitlines()[-1] == "1 rendered, 1 skipped, 0 failed", fourth.output()
    assert f"orphaned run {sunset_1.info.run_id}" in fourth.output() and not staging.exists()
    seconds = time.monotonic() - started

    runs = client.search_runs([experiment_id], "tags.stage = 'final'")
    assert finals("hero", "FINISHED")[0].info.run_id == hero_2.info.run_id
    by_status = {}
    for run in runs:
        by_status.setdefault(run.info.status, set()).add(run.info.run_id)
    assert set(by_status) == {"FINISHED", "KILLED"}
    assert by_status["KILLED"] == {hero_1.info.run_id, sunset_1.info.run_id}
    for name in ("hero", "sunset"):  # exactly one finished final per lock and final_spec_id
        done = finals(name, "FINISHED")
        assert len(done) == 1 and len({r.data.tags["final_spec_id"] for r in finals(name)}) == 1
        assert set(ROOT_ARTIFACTS) | {"02_render.ipynb"} <= artifacts(done[0])
    finished_dirs = {Path(client.get_run(r).data.tags["out_dir"]) for r in by_status["FINISHED"]}
    render_files = [p for p in (folder / "out").rglob("*") if p.name in RENDER_FILES]
    assert render_files and {p.parent for p in render_files} == finished_dirs
    assert not [p for p in (folder / "out").rglob("*") if "partial" in p.name]
    print(f"\ncrash test: 4 replays, 3 kills, {seconds:.1f} s")


def test_orphan_rule(store, tmp_path):
    """Same host: ended as soon as the pid is gone; the live pid of this process is left alone. Another host:
    left alone while its heartbeat is fresh, ended when it is older than STALE_AFTER_S. Runs ended lose their
    staging folder when it is on this host."""
    client, experiment_id = client_and_experiment(store)
    gone = subprocess.Popen(["true"])
    gone.wait()
    here, now = socket.gethostname(), dt.datetime.now(dt.timezone.utc)
    old = (now - dt.timedelta(minutes=11)).isoformat(timespec="seconds")
    cases = {
        "dead pid": {"host": here, "pid": str(gone.pid), "heartbeat_at": now.isoformat()},
        "this process": {"host": here, "pid": str(os.getpid()), "heartbeat_at": now.isoformat()},
        "other host, fresh": {"host": "elsewhere", "pid": "1", "heartbeat_at": now.isoformat()},
        "other host, stale": {"host": "elsewhere", "pid": "1", "heartbeat_at": old},
        "no tags": {},
    }
    ids = {}
    for name, tags in cases.items():
        run = client.create_run(experiment_id, tags={**tags, "out_dir": str(tmp_path)}, run_name=name)
        ids[name] = run.info.run_id
        (tmp_path / f".partial-{run.info.run_id}").mkdir()
    ended = dict(end_orphaned_runs(store, ended_by="test"))
    assert set(ended) == {ids["dead pid"], ids["other host, stale"]}
    assert ended[ids["dead pid"]] == f"its process {gone.pid} on {here} is gone"
    assert ended[ids["other host, stale"]].startswith("no heartbeat for 11 min (process 1 on elsewhere)")
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        assert run.info.status == ("KILLED" if run_id in ended else "RUNNING"), name
        assert (tmp_path / f".partial-{run_id}").exists() == (name != "dead pid"), name  # other hosts' kept
    assert client.get_run(ids["dead pid"]).data.tags["ended_by"].startswith("test (process ")


def test_an_orphans_render_folder_goes_when_its_staging_folder_was_all_it_held(store, tmp_path):
    client, experiment_id = client_and_experiment(store)
    gone = subprocess.Popen(["true"])
    gone.wait()
    tags = {"host": socket.gethostname(), "pid": str(gone.pid)}
    for name in ("alone", "with other files"):
        run = client.create_run(experiment_id, tags={**tags, "out_dir": str(tmp_path / name)}, run_name=name)
        (tmp_path / name / f".partial-{run.info.run_id}").mkdir(parents=True)
    (tmp_path / "with other files" / "notes.txt").write_text("mine")
    assert len(end_orphaned_runs(store, ended_by="test")) == 2
    assert not (tmp_path / "alone").exists()
    assert [p.name for p in (tmp_path / "with other files").iterdir()] == ["notes.txt"]


def test_a_kernel_that_dies_mid_render_leaves_its_run_failed_not_running(store, tmp_path, monkeypatch):
    """Only the kernel dies (the OOM killer's way) while the replay lives: the replay ends the attempt's RUNNING
    run FAILED at once, removes its staging folder, and goes on. Without a kernel: the stand-in for papermill
    starts the run as the notebook's render would, stages a file, and raises what nbclient raises."""
    from nbclient.exceptions import DeadKernelError

    from wanflow.replay import replay
    from wanflow.tracking import RenderRun, staging_folder

    draft = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt="a blue square", seed=1), out_dir=tmp_path / "d",
                           tracking_uri=store, progress=False)
    lock(draft.run_id, "hero", store)
    started = {}

    def dying_kernel(notebook, output, parameters, **_):
        out_dir = Path(parameters["output_dir"])
        run = RenderRun.start({}, {"stage": "final", "attempt_id": parameters["attempt_id"],
                                   "out_dir": str(out_dir)}, "final: hero", parameters["tracking_uri"])
        started["run"], started["staging"] = run.run_id, staging_folder(out_dir, run.run_id)
        started["staging"].mkdir(parents=True)
        (started["staging"] / "video.mp4").write_bytes(b"half")
        raise DeadKernelError("Kernel died")

    monkeypatch.setattr("wanflow.replay.execute", dying_kernel)
    summary = replay(["hero"], final_preset=FINAL, tracking_uri=store, out_dir=tmp_path / "out",
                     report=lambda line: None)
    (outcome,) = summary.outcomes
    assert outcome.status == "failed" and outcome.run_id == started["run"] and "Kernel died" in outcome.message
    run = MlflowClient(store).get_run(started["run"])
    assert run.info.status == "FAILED" and run.data.tags["error"] == "DeadKernelError: Kernel died"
    assert not started["staging"].exists()


def test_a_running_render_beats_and_stops_beating_when_it_ends(store, monkeypatch):
    """The heartbeat thread refreshes ``heartbeat_at`` while the run is RUNNING (here every 0.2 s instead of
    HEARTBEAT_S) and stops when the run ends."""
    from wanflow import tracking

    monkeypatch.setattr(tracking, "HEARTBEAT_S", 0.2)
    run = tracking.RenderRun.start({}, {"stage": "draft"}, "beats", store)
    client = run.client
    first = client.get_run(run.run_id).data.tags
    assert first["host"] == socket.gethostname() and first["pid"] == str(os.getpid())
    deadline = time.monotonic() + 10
    while client.get_run(run.run_id).data.tags["heartbeat_at"] == first["heartbeat_at"]:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.1)
    run.fail(RuntimeError("done"))
    beats = [t for t in threading.enumerate() if t.name == f"heartbeat-{run.run_id[:8]}"]
    for thread in beats:
        thread.join(timeout=2)
    assert not any(t.is_alive() for t in beats)


def test_history_shows_a_killed_render_as_killed(store, capsys):
    """A render killed outside a replay (its pid gone on this host) is ended KILLED by ``wanflow history``, which
    then lists it so; a live process's run stays RUNNING."""
    from wanflow.cli import main

    client, experiment_id = client_and_experiment(store)
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    dead = client.create_run(experiment_id, tags={"host": socket.gethostname(), "pid": str(gone.pid),
                                                  "heartbeat_at": now, "stage": "draft"}).info.run_id
    alive = client.create_run(experiment_id, tags={"host": socket.gethostname(), "pid": str(os.getpid()),
                                                   "heartbeat_at": now, "stage": "draft"}).info.run_id
    assert main(["history", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(dead).data.tags["ended_by"].startswith("wanflow history")
    assert client.get_run(alive).info.status == "RUNNING"
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "KILLED" in rows[dead] and "RUNNING" in rows[alive]
