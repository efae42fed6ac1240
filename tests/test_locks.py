"""Locks: tags on the draft's run; lock, unlock, list; bad names and runs are refused with field-naming errors."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient

import wanflow
from wanflow import cli
from wanflow.locks import LockError, get_lock, list_locks, lock, unlock
from wanflow.spec import RenderSpec

from .conftest import PROMPT


@pytest.fixture
def drafts(tmp_path, store):
    return [
        wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=f"{PROMPT} {i}", seed=i), out_dir=tmp_path / str(i),
                       tracking_uri=store, progress=False)
        for i in range(2)
    ]


def test_lock_tags_the_run_and_reads_back_its_spec(drafts, store):
    held = lock(drafts[0].run_id, "hero", store)
    assert held.spec == drafts[0].spec and held.run_id == drafts[0].run_id
    assert MlflowClient(store).get_run(drafts[0].run_id).data.tags["lock"] == "hero"
    table = list_locks(store)
    assert table[["name", "run_id", "seed", "prompt"]].values.tolist() == [
        ["hero", drafts[0].run_id, "0", f"{PROMPT} 0"]]
    assert get_lock("hero", store).download("video.mp4", store.removeprefix("sqlite:///") + ".dl").stat().st_size > 0


def test_reading_a_lock_draws_no_download_bar(drafts, store, tmp_path, capfd, monkeypatch):
    """MLflow draws a "Downloading artifacts" bar for every file it copies; a lock's spec and video are single small
    files, and the bar was noise in every replay log. The switch is restored afterwards."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    lock(drafts[0].run_id, "hero", store)
    capfd.readouterr()
    held = get_lock("hero", store)
    assert held.download("video.mp4", tmp_path / "dl").stat().st_size > 0
    out, err = capfd.readouterr()
    assert "Downloading artifacts" not in out + err
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


def test_names_are_unique_and_moving_needs_force(drafts, store):
    lock(drafts[0].run_id, "hero", store)
    with pytest.raises(LockError, match="name: 'hero' already locks run"):
        lock(drafts[1].run_id, "hero", store)
    with pytest.raises(LockError, match="run_id: .* already locked as 'hero'"):
        lock(drafts[0].run_id, "other", store)
    lock(drafts[1].run_id, "hero", store, force=True)
    assert list_locks(store)["run_id"].tolist() == [drafts[1].run_id]
    assert unlock("hero", store) == drafts[1].run_id
    assert list_locks(store).empty
    with pytest.raises(LockError, match="name: no lock called 'hero'"):
        unlock("hero", store)


@pytest.mark.parametrize("name", ["", "has space", "quote'd", "-leading", "x" * 65, "a/b"])
def test_bad_lock_names_are_refused(drafts, store, name):
    with pytest.raises(LockError, match="name: .* not a valid lock name"):
        lock(drafts[0].run_id, name, store)


def test_missing_or_failed_runs_cannot_be_locked(drafts, store):
    with pytest.raises(LockError, match="run_id: no run 'nope'"):
        lock("nope", "x", store)
    client = MlflowClient(store)
    run = client.create_run(client.get_experiment_by_name("wanflow").experiment_id)
    client.set_terminated(run.info.run_id, "FAILED")
    with pytest.raises(LockError, match="is FAILED"):
        lock(run.info.run_id, "x", store)


def test_cli_lock_locks_unlock(drafts, store, capsys):
    assert cli.main(["lock", drafts[0].run_id, "--name", "hero", "--tracking-uri", store]) == 0
    assert cli.main(["locks", "--json", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert [r["name"] for r in rows] == ["hero"]
    assert cli.main(["lock", drafts[1].run_id, "--name", "bad name", "--tracking-uri", store]) == 2
    assert "name: 'bad name' is not a valid lock name" in capsys.readouterr().err
    assert cli.main(["unlock", "hero", "--tracking-uri", store]) == 0
    assert cli.main(["locks", "--tracking-uri", store]) == 0
    assert "no locks yet" in capsys.readouterr().out
