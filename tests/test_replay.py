"""Replay through papermill: lock -> replay -> rerun skips -> --force renders again; a failing lock is recorded
FAILED with its notebook and the batch goes on; the executed notebook is attached; text survives byte for byte.
Also the notebook's parameters, the stored notebook without outputs, and the SkyPilot task.

Kernel starts cost seconds, so the real papermill runs are few: one batch of two locks, one forced rerun."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from mlflow.tracking import MlflowClient

import wanflow
from wanflow import cli
from wanflow.locks import lock
from wanflow.replay import NOTEBOOK, CurrentPythonKernelManager, replay
from wanflow.spec import RenderSpec

from .test_transfer import EVIL

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "pipelines" / "replay-a100.sky.yaml"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Two locks replayed first-frame at frame 6 on tiny-i2v-a14b: ``hero`` (9 frames, an evil prompt) renders,
    ``short`` (5 frames) fails before rendering."""
    folder = tmp_path_factory.mktemp("replay")
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    drafts = {}
    for name, frames, prompt in (("hero", 9, EVIL), ("short", 5, "a blue square")):
        drafts[name] = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=prompt, seed=7, num_frames=frames),
                                      out_dir=folder / name, tracking_uri=store, progress=False)
        lock(drafts[name].run_id, name, store)
    lines = []
    summary = replay(None, final_preset="tiny-i2v-a14b", mode="first-frame", frame_index=6, tracking_uri=store,
                     out_dir=folder / "out", report=lines.append)
    return store, drafts, summary, lines, folder


def test_replay_renders_and_records_a_failing_lock_without_stopping(batch):
    store, drafts, summary, lines, _ = batch
    outcomes = {o.lock: o for o in summary.outcomes}
    assert [o.lock for o in summary.outcomes] == ["hero", "short"]
    assert outcomes["hero"].status == "rendered" and outcomes["short"].status == "failed"
    assert lines[-1] == "1 rendered, 0 skipped, 1 failed" and summary.exit_code == 1
    client = MlflowClient(store)

    hero = client.get_run(outcomes["hero"].run_id)
    tags = hero.data.tags
    assert hero.info.status == "FINISHED" and tags["stage"] == "final" and tags["transfer"] == "first-frame"
    assert tags["lock_name"] == "hero" and tags["draft_run_id"] == drafts["hero"].run_id
    assert tags["transfer_frame"] == "6" and "lock" not in tags
    assert hero.data.params["prompt"] == EVIL  # draft -> lock -> papermill -> final, byte for byte
    assert {a.path for a in client.list_artifacts(hero.info.run_id)} >= {"02_render.ipynb", "video.mp4"}
    # the attached notebook is the executed one: parameters injected, every cell ran, the run id in its output
    attached = client.download_artifacts(hero.info.run_id, "02_render.ipynb", str(batch[4] / "dl"))
    nb = nbformat.read(attached, as_version=4)
    assert nb.metadata.papermill.parameters["lock_name"] == "hero"
    assert nb.metadata.papermill.parameters["attempt_id"] == tags["attempt_id"]
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    assert hero.info.run_id in json.dumps([c.get("outputs") for c in nb.cells])
    assert json.loads((outcomes["hero"].notebook.parent / "final.json").read_text())["run_id"] == hero.info.run_id

    short = client.get_run(outcomes["short"].run_id)
    assert short.info.status == "FAILED" and short.data.tags["stage"] == "final"
    assert short.data.tags["lock_name"] == "short" and short.data.tags["draft_run_id"] == drafts["short"].run_id
    # one line from papermill's error: the notebook cell's exception, not papermill's banner
    assert short.data.tags["error"].startswith("TransferError: frame_index: 6 is past the draft's last frame")
    assert "\n" not in short.data.tags["error"]
    assert {a.path for a in client.list_artifacts(short.info.run_id)} == {"02_render.ipynb", "error.txt"}
    failed_nb = nbformat.read(outcomes["short"].notebook, as_version=4)
    assert failed_nb.metadata.papermill.exception


def test_rerun_skips_and_force_renders_again(batch, capsys):
    store, _, summary, _, folder = batch
    first = next(o for o in summary.outcomes if o.lock == "hero")
    again = replay(["hero", "hero"], final_preset="tiny-i2v-a14b", mode="first-frame", frame_index=6,
                   tracking_uri=store, out_dir=folder / "out", report=lambda line: None)  # a name twice: once
    assert [(o.status, o.run_id) for o in again.outcomes] == [("skipped", first.run_id)] and again.exit_code == 0
    code = cli.main(["replay", "--locks", "hero", "--model", "tiny-i2v-a14b", "--mode", "first-frame", "--frame", "6",
                     "--force", "--tracking-uri", store, "--out", str(folder / "out")])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1] == "1 rendered, 0 skipped, 0 failed"
    finals = wanflow.history(store, stage="final")
    hero = finals[finals["status"] == "FINISHED"]
    assert len(hero) == 2 and first.run_id in set(hero["run_id"])


def test_bad_replay_input_exits_2_before_any_notebook(batch, capsys, monkeypatch):
    store = batch[0]
    monkeypatch.setattr("wanflow.replay.execute", lambda *a, **k: pytest.fail("no notebook may run"))
    assert cli.main(["replay", "--model", "tiny-i2v-a14b", "--mode", "draft-v2v", "--tracking-uri", store]) == 2
    assert "final_preset: tiny-i2v-a14b cannot run draft-v2v" in capsys.readouterr().err
    assert cli.main(["replay", "--locks", "ghost", "--model", "tiny-t2v-a14b", "--tracking-uri", store]) == 2
    assert "name: no lock called 'ghost'" in capsys.readouterr().err
    not_a_notebook = batch[4] / "render.png"
    not_a_notebook.write_bytes(b"\x89PNG not really")
    assert cli.main(["replay", "--notebook", str(not_a_notebook), "--model", "tiny-t2v-a14b", "--tracking-uri",
                     store]) == 2
    assert f"notebook: {not_a_notebook} is not a Jupyter notebook" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a machine without a GPU, as CI is
    for dtype in ("auto", "float32"):
        assert cli.main(["replay", "--device", "cuda", "--dtype", dtype, "--model", "tiny-t2v-a14b",
                         "--tracking-uri", store]) == 2
        assert "device: 'cuda' asked for, but torch sees no CUDA GPU" in capsys.readouterr().err


def test_a_render_that_fails_gets_its_notebook_on_its_own_failed_run(batch, monkeypatch, tmp_path):
    """The other failure path, without a kernel: the render itself starts a run and fails it; replay finds that
    run by its attempt id and attaches the failed notebook to it rather than making another."""
    from papermill.exceptions import PapermillExecutionError

    from wanflow import rendering
    from wanflow.transfer import render_final, request_from_dict

    store = batch[0]

    def broken(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    def fake_execute(notebook, output, parameters, **_):
        monkeypatch.setattr(rendering, "generate", broken)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        try:
            render_final(request_from_dict(parameters), tracking_uri=parameters["tracking_uri"],
                         out_dir=parameters["output_dir"], tags={"attempt_id": parameters["attempt_id"]},
                         progress=False)
        except RuntimeError as err:
            raise PapermillExecutionError(3, 1, "render_final(...)", "RuntimeError", str(err), []) from err

    monkeypatch.setattr("wanflow.replay.execute", fake_execute)
    summary = replay(["hero"], final_preset="tiny-t2v-a14b", tracking_uri=store, out_dir=tmp_path,
                     report=lambda line: None)
    (outcome,) = summary.outcomes
    assert outcome.status == "failed" and "out of memory (simulated)" in outcome.message
    run = MlflowClient(store).get_run(outcome.run_id)
    assert run.info.status == "FAILED" and run.data.tags["transfer"] == "fresh"
    assert run.data.params["prompt"] == EVIL  # the render's own run (it logged the spec), not a stand-in
    assert {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)} == {"02_render.ipynb", "error.txt"}


def test_notebook_documents_its_parameters_and_is_stored_without_outputs():
    params = papermill.inspect_notebook(str(NOTEBOOK))
    expected = {"lock_name": "str", "final_preset": "str", "transfer_mode": "str", "strength": "float",
                "frame_index": "int", "seed": "Optional[int]", "steps": "Optional[int]", "width": "Optional[int]",
                "height": "Optional[int]", "num_frames": "Optional[int]", "tracking_uri": "str", "output_dir": "str"}
    for name, type_name in expected.items():
        assert params[name]["inferred_type_name"] == type_name and params[name]["help"], name
    from wanflow.transfer import DEFAULT_STRENGTH

    assert float(params["strength"]["default"]) == DEFAULT_STRENGTH  # the notebook's default is the kit's
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    assert "import ipywidgets" not in NOTEBOOK.read_text()  # headless: nothing to click


def test_kernel_is_this_interpreter_whatever_is_registered():
    import sys

    manager = CurrentPythonKernelManager(kernel_name="python3")
    assert manager.kernel_spec.argv[0] == sys.executable and manager.kernel_spec.language == "python"


def _sky_checks(task: dict) -> None:
    """Keys and values against SkyPilot's documented task schema (docs: "SkyPilot YAML")."""
    assert set(task) <= {"name", "workdir", "num_nodes", "resources", "envs", "secrets", "file_mounts", "setup",
                         "run", "config", "volumes", "service"}
    assert task["resources"]["accelerators"] == "A100-80GB:1"
    assert "environment.yml" in task["setup"] and "wanflow replay" in task["run"]
    assert "MLFLOW_TRACKING_URI" in task["envs"] and "HF_TOKEN" in task["secrets"]
    assert "HF_TOKEN" not in task["envs"]  # a secret, never an env (envs are shown in logs and dashboards)


SKY_PARSE = """
import sys, yaml, sky
path = sys.argv[1]
try:
    sky.Task.from_yaml(path)
    raise SystemExit("from_yaml accepted a task without MLFLOW_TRACKING_URI")
except ValueError as err:
    assert "MLFLOW_TRACKING_URI" in str(err), err
config = yaml.safe_load(open(path))
task = sky.Task.from_yaml_config(config, env_overrides=[("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")],
                                 secrets_overrides=[("HF_TOKEN", "hf_test")])
(resources,) = task.resources
assert resources.accelerators == {"A100-80GB": 1}, resources.accelerators
assert task.envs["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and set(task.secrets) == {"HF_TOKEN"}
config = yaml.safe_load(open(path))  # from_yaml_config consumes its argument
config["setpu"] = config.pop("setup")
try:
    sky.Task.from_yaml_config(config, env_overrides=[("MLFLOW_TRACKING_URI", "x")])
    raise SystemExit("a misspelled key was accepted")
except Exception as err:
    assert "setpu" in str(err), err
print("parsed", sky.__version__)
"""


def test_skypilot_task_parses_offline():
    """SkyPilot itself parses the task, offline. SkyPilot pins an older click than mlflow, so it lives in its own
    venv: scripts/test.sh makes .venv-sky and passes its interpreter as WANFLOW_SKY_PYTHON."""
    import os
    import subprocess
    import sys

    _sky_checks(yaml.safe_load(TASK.read_text()))
    python = os.environ.get("WANFLOW_SKY_PYTHON")
    if not python:
        pytest.importorskip("sky", reason="set WANFLOW_SKY_PYTHON to a python with skypilot (scripts/test.sh does)")
        python = sys.executable
    out = subprocess.run([python, "-c", SKY_PARSE, str(TASK)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "parsed" in out.stdout, out.stdout + out.stderr

def test_micro_workflow_draft_lock_replay_keeps_the_draft(tmp_path):
    """The whole working pattern on the embedded models, with the content checked from the frames: a micro-ti2v
    draft of the README's prompt, locked, replayed through papermill as a draft-v2v final on micro-a14b. The final
    keeps the draft's object colour, background, motion and starting position (the draft's frames are its input)."""
    from wanflow.media import probe_video
    from wanflow.quality import detect

    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    prompt = "a red circle moving left on a blue background"
    draft = wanflow.render(RenderSpec(preset="micro-ti2v", prompt=prompt, seed=0), out_dir=tmp_path / "draft",
                           tracking_uri=store, progress=False)
    lock(draft.run_id, "hero", store)
    summary = replay(["hero"], final_preset="micro-a14b", mode="draft-v2v", seed=5, tracking_uri=store,
                     out_dir=tmp_path / "finals", report=lambda line: None)
    (outcome,) = summary.outcomes
    assert outcome.status == "rendered", outcome.message
    run = MlflowClient(store).get_run(outcome.run_id)
    assert run.data.tags["transfer"] == "draft-v2v" and run.data.tags["draft_run_id"] == draft.run_id
    # the default strength 0.15 runs the last 3 of 20 steps; at draft-v2v's flow shift 1 they start at t = 150,
    # below the 875 boundary, so the low-noise expert alone refines the draft
    assert run.data.tags["transfer_strength"] == "0.15" and run.data.params["flow_shift"] == "1.0"
    assert (run.data.metrics["steps_transformer"], run.data.metrics["steps_transformer_2"]) == (0, 3)
    assert run.data.metrics["adherence"] == 1.0  # logged by the final render itself
    final = detect(probe_video(Path(run.data.tags["out_dir"]) / "video.mp4")["frames"])
    before = detect(draft.frames)
    assert (before.object_colour, before.background, before.direction) == ("red", "blue", "left")
    assert (final.object_colour, final.background, final.direction) == ("red", "blue", "left")
    assert abs(final.start[0] - before.start[0]) < 0.06 and abs(final.start[1] - before.start[1]) < 0.06


def test_replay_with_no_locks_says_how_to_make_one(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines = []
    summary = replay(None, final_preset="micro-a14b", mode="draft-v2v", tracking_uri=store, out_dir=tmp_path / "out",
                     report=lines.append)
    assert lines[0].startswith("no locks in sqlite:///") and "wanflow lock RUN_ID --name NAME" in lines[0]
    assert lines[-1] == "0 rendered, 0 skipped, 0 failed" and summary.exit_code == 0
