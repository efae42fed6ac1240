"""The studio: its logic as plain functions and the widget click path in plain pytest. The wired UI in a real
kernel (01_explore's own studio, clicked) is tested in test_notebooks.py, sharing that notebook's kernel start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import wanflow
from wanflow.explore import (
    StudioState,
    controls_from_params,
    controls_from_spec,
    do_generate,
    do_lock,
    field_errors,
    history_rows,
    notebook_paths,
    thumbnail_gif,
)
from wanflow.locks import LockError, list_locks
from wanflow.presets import DEFAULT_PRESET, get_preset
from wanflow.spec import RenderSpec

from .conftest import PROMPT

TWO = "tiny-t2v-a14b"
ONE = "tiny-ti2v"


# --- plain functions -------------------------------------------------------------------------------------------
def test_state_defaults_follow_the_preset_and_keep_the_users_text():
    state = StudioState.from_preset()
    assert state.preset == DEFAULT_PRESET and state.seed_mode == "new random"
    two = dataclasses.replace(StudioState.from_preset(ONE, prompt=PROMPT, seed=5), num_inference_steps=99)
    two = two.with_preset(TWO)
    preset = get_preset(TWO)
    assert (two.prompt, two.seed, two.seed_mode) == (PROMPT, 5, "keep")
    assert (two.num_inference_steps, two.guidance_scale, two.guidance_scale_2, two.flow_shift, two.num_frames) == (
        preset.num_inference_steps, preset.guidance_scale, preset.guidance_scale_2, preset.flow_shift,
        preset.num_frames)
    assert two.with_preset(ONE).guidance_scale_2 is None
    custom = dataclasses.replace(two, negative_prompt="blurry").with_preset("t2v-a14b")
    assert custom.negative_prompt == "blurry"  # the user's text is kept ...
    assert two.with_preset("t2v-a14b").negative_prompt == get_preset("t2v-a14b").negative_prompt  # ... a default follows


def test_seed_modes():
    keep = StudioState.from_preset(ONE, prompt=PROMPT, seed=42)
    assert keep.to_spec().seed == 42 == keep.to_spec().seed
    fresh = dataclasses.replace(keep, seed_mode="new random")
    assert len({fresh.to_spec().seed for _ in range(5)}) > 1


def test_spec_and_params_round_trip_through_the_controls():
    spec = RenderSpec(preset=TWO, prompt='quotes " \\ and\nnewlines ✨', seed=9, num_inference_steps=5,
                      guidance_scale=2.5, guidance_scale_2=1.5, flow_shift=7.0, negative_prompt="blur")
    assert controls_from_spec(spec).to_spec() == spec
    assert controls_from_params(spec.to_params()) == controls_from_spec(spec)
    one = RenderSpec(preset=ONE, prompt=PROMPT, seed=1)
    assert controls_from_params(one.to_params()).to_spec() == one
    with pytest.raises(ValueError, match="run: its params are not a wanflow render's"):
        controls_from_params({"prompt": "x"})


def test_field_errors_name_the_fields():
    bad = dataclasses.replace(StudioState.from_preset(ONE, prompt=" ", seed=1), width=65, num_frames=10)
    with pytest.raises(ValueError) as caught:
        bad.to_spec()
    errors = field_errors(caught.value)
    assert set(errors) == {"prompt", "width", "num_frames"}
    assert "multiple of 32" in errors["width"]


def test_generate_lock_history_as_plain_functions(store, tmp_path):
    state = dataclasses.replace(StudioState.from_preset(ONE, prompt=PROMPT), seed_mode="new random")
    steps = []
    made = do_generate(state, tracking_uri=store, output_dir=tmp_path, on_step=steps.append)
    assert made.result.video.parent.parent == tmp_path
    assert made.state.seed == made.spec.seed == made.result.seed  # the seed actually used comes back
    assert [e.step for e in steps] == list(range(made.spec.num_inference_steps))
    params = MlflowClient(store).get_run(made.run_id).data.params
    assert params["seed"] == str(made.result.seed)  # ... and is logged
    with pytest.raises(LockError, match="run_id: generate a render"):
        do_lock(None, "hero", store)
    assert do_lock(made.run_id, " hero ", store).name == "hero"
    (row,) = history_rows(store)
    assert (row.run_id, row.lock, row.stage, row.seed) == (made.run_id, "hero", "draft", str(made.result.seed))
    assert row.state().to_spec() == made.spec
    thumb = row.thumbnail(64)
    assert thumb.startswith(b"GIF8") and len(thumb) < made.result.files.preview.stat().st_size
    assert "hero" in row.label and made.run_id[:8] in row.label


def test_notebook_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # as Jupyter starts a notebook
    assert notebook_paths("", "outputs") == (f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", tmp_path / "outputs")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert notebook_paths("", "/abs") == ("http://127.0.0.1:5000", Path("/abs"))
    assert notebook_paths("sqlite:///x.db")[0] == "sqlite:///x.db"
    monkeypatch.chdir(tmp_path)  # papermill's cwd, or a notebook elsewhere: relative to the current folder
    assert notebook_paths("", "out")[1] == tmp_path / "out"


def test_thumbnail_is_small(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (256, 128), (i * 8, 0, 0)) for i in range(30)]
    frames[0].save(tmp_path / "p.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    (tmp_path / "t.gif").write_bytes(thumbnail_gif(tmp_path / "p.gif", size=64, max_frames=10))
    with Image.open(tmp_path / "t.gif") as thumb:
        assert thumb.size == (64, 32) and thumb.n_frames <= 10


# --- the widgets, clicked in plain pytest ------------------------------------------------------------------------
@pytest.fixture
def studio(store, tmp_path):
    from wanflow.studio import Studio

    return Studio(preset=ONE, tracking_uri=store, output_dir=tmp_path / "out")


def test_changing_preset_updates_defaults_and_guidance_2(studio):
    assert studio.guidance_scale_2.layout.display == "none"
    studio.num_inference_steps.value = 99
    studio.prompt.value = PROMPT
    studio.preset.value = TWO
    assert studio.guidance_scale_2.layout.display is None
    assert (studio.num_inference_steps.value, studio.guidance_scale_2.value) == (6, 3.0)
    assert studio.prompt.value == PROMPT
    assert studio.read().guidance_scale_2 == 3.0
    studio.preset.value = ONE
    assert studio.guidance_scale_2.layout.display == "none" and studio.read().guidance_scale_2 is None


def test_bad_width_shows_a_field_error_and_makes_no_run(studio, store):
    studio.prompt.value = PROMPT
    studio.width.value = 65
    studio.generate_button.click()
    assert "<b>width</b>: 65 must be a multiple of 32" in studio.errors.value
    assert studio.width.layout.border and not studio.height.layout.border
    assert wanflow.history(store).empty and studio.current_run_id is None


def test_generate_lock_and_load_by_clicking(studio, store):
    studio.prompt.value = PROMPT
    studio.seed_mode.value = "new random"
    studio.generate_button.click()
    (run,) = wanflow.history(store).itertuples()
    assert run.status == "FINISHED" and studio.current_run_id == run.run_id
    assert studio.seed.value == run.seed and f"seed used: <b>{run.seed}</b>" in studio.status.value
    assert studio.progress.value == studio.progress.max == run.num_inference_steps
    assert bytes(studio.video.value).startswith(b"GIF8") and studio.errors.value == ""
    assert studio.seed_mode.value == "new random"

    studio.lock_name.value = "hero"
    studio.lock_button.click()
    assert list_locks(store)["run_id"].tolist() == [run.run_id] and "hero" in studio.lock_status.value
    assert [r.lock for r in studio.rows] == ["hero"]

    studio.preset.value = TWO
    studio.prompt.value = "something else"
    studio.history_buttons()[0].click()  # load the render's settings back
    assert (studio.preset.value, studio.prompt.value, studio.seed.value, studio.seed_mode.value) == (
        ONE, PROMPT, run.seed, "keep")
    assert studio.num_inference_steps.value == get_preset(ONE).num_inference_steps
    assert studio.guidance_scale_2.layout.display == "none"
    assert studio.read().to_spec().spec_id == wanflow.history(store)["spec_id"][0]

    studio.lock_name.value = "second"
    studio.lock_button.click()  # one run holds one lock: the error is shown, nothing changes
    assert "already locked as 'hero'" in studio.lock_status.value
    assert list_locks(store)["name"].tolist() == ["hero"]
