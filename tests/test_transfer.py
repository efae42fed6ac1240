"""Final renders from locks: each transfer mode on the tiny presets (TI2V-style draft -> A14B-style final) with
lineage tags; video-to-video's expert per step at low and high strength; bad requests refused before any model loads."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

import wanflow
from wanflow.generate import generate
from wanflow.loading import LoadOptions, clear_cache, load_pipeline
from wanflow.locks import list_locks, lock
from wanflow.media import probe_video
from wanflow.presets import get_preset
from wanflow.spec import RenderSpec
from wanflow import transfer
from wanflow.transfer import FinalRequest, TransferError, plan_final, render_final
from wanflow.video2video import input_frames

from .conftest import PROMPT
from .experts import assert_routed, observe_experts

EVIL = 'say "hi" \\ C:\\new\nline two 🎬 `"); import os #` \'end\''


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """One store with a locked tiny-ti2v draft (seed 12345, an evil prompt) and its files."""
    folder = tmp_path_factory.mktemp("transfer")
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    draft = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=EVIL, seed=12345), out_dir=folder / "draft",
                           tracking_uri=store, progress=False)
    lock(draft.run_id, "hero", store)
    return store, draft, folder


def _final_run(store, result):
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    return run


@pytest.mark.parametrize("mode, final, extra", [
    ("fresh", "tiny-t2v-a14b", {}),
    ("first-frame", "tiny-i2v-a14b", {"frame_index": 4}),
    ("draft-v2v", "tiny-t2v-a14b", {"strength": 0.6}),
])
def test_each_mode_renders_a_final_with_lineage(locked, mode, final, extra, tmp_path):
    store, draft, _ = locked
    request = FinalRequest(lock_name="hero", final_preset=final, mode=mode, **extra)
    result = render_final(request, tracking_uri=store, out_dir=tmp_path / "final", progress=False)
    run = _final_run(store, result)
    tags, params = run.data.tags, run.data.params
    assert tags["stage"] == "final" and tags["preset"] == final
    assert tags["lock_name"] == "hero" and tags["draft_run_id"] == draft.run_id
    assert tags["draft_spec_id"] == draft.spec.spec_id and tags["transfer"] == mode
    assert tags["final_spec_id"] == request.final_spec_id(draft.run_id)
    assert "lock" not in tags  # that tag marks locked drafts only
    assert list_locks(store)["run_id"].tolist() == [draft.run_id]
    assert params["prompt"] == EVIL  # byte for byte through the lock
    assert result.seed != draft.seed  # seeds never carry across models
    assert result.frames.shape == (9, 64, 64, 3)
    if mode == "fresh":
        assert tags["task"] == "t2v" and "transfer_strength" not in tags and "transfer_frame" not in tags
    if mode == "first-frame":
        assert tags["task"] == "i2v" and tags["transfer_frame"] == "4" and "transfer_strength" not in tags
        expected = probe_video(draft.video)["frames"][4]
        assert np.array_equal(np.asarray(Image.open(result.spec.image)), expected)
    if mode == "draft-v2v":
        assert tags["task"] == "v2v" and tags["transfer_strength"] == "0.6" and "transfer_frame" not in tags
        assert tags["pipeline"] == "WanVideoToVideoPipeline"
        assert params["strength"] == "0.6" and params["video_sha256"]
        assert params["flow_shift"] == "1.0"  # DRAFT_V2V_FLOW_SHIFT, not the preset's 12: starts at t = 600
        assert len(result.steps) == int(6 * 0.6) and run.data.metrics["steps_transformer_2"] >= 1


@pytest.mark.parametrize("strength", [0.2, 0.9])
def test_video_to_video_runs_the_expert_of_each_timestep(locked, monkeypatch, strength):
    _, draft, _ = locked
    preset = get_preset("tiny-t2v-a14b")
    spec = RenderSpec(preset=preset.name, prompt=PROMPT, seed=0, num_inference_steps=10, guidance_scale=4.0,
                      guidance_scale_2=2.0, video=str(draft.video), strength=strength)
    base = load_pipeline(preset, "t2v").pipe  # the router wraps these very modules
    with observe_experts(monkeypatch, {"transformer": base.transformer, "transformer_2": base.transformer_2}) as seen:
        generation = generate(spec, progress=False)
    boundary = preset.boundary_ratio * 1000
    assert len(seen) == len(generation.steps) == int(10 * strength)
    experts = assert_routed(seen, generation.steps, boundary, 4.0, 2.0)
    if strength == 0.2:  # first timestep below the boundary: the low-noise expert alone
        assert seen[0][1] < boundary and set(experts) == {"transformer_2"}
    else:  # high noise first, one hand-over, as text-to-video
        assert seen[0][1] >= boundary and experts[0] == "transformer" and "transformer_2" in experts
        assert experts == sorted(experts)
    assert generation.pipeline_class == "WanVideoToVideoPipeline"
    # what the step caches are sized by, computed before the render, matches what ran
    from wanflow.generate import expert_steps

    counted = {name: experts.count(name) for name in ("transformer", "transformer_2") if name in experts}
    assert {k: v for k, v in expert_steps(load_pipeline(preset, "v2v").pipe, spec).items() if v} == counted


def test_input_frames_keep_duration_and_take_the_final_size(locked):
    _, draft, _ = locked
    frames = input_frames(draft.video, 5, 48, 32)
    assert len(frames) == 5 and {f.size for f in frames} == {(48, 32)}
    decoded = probe_video(draft.video)["frames"]
    assert np.array_equal(np.asarray(input_frames(draft.video, 5, 64, 64)[-1]), decoded[-1])  # ends on the last


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to load a model or render."""
    for module, name in (("wanflow.generate", "load_pipeline"), ("wanflow.rendering", "generate")):
        monkeypatch.setattr(importlib.import_module(module), name,
                            lambda *a, **k: pytest.fail("no model may load for a bad request"))


@pytest.mark.parametrize("fields, message", [
    ({"mode": "remix"}, "transfer_mode: 'remix' is not one of fresh, first-frame, draft-v2v"),
    ({"final_preset": "nope"}, "final_preset: unknown preset 'nope'"),
    ({"mode": "draft-v2v", "strength": 0.0}, "strength: 0.0 is out of range; allowed 0 < strength <= 1"),
    ({"mode": "draft-v2v", "strength": 1.5}, "strength: 1.5 is out of range"),
    ({"mode": "draft-v2v", "strength": 0.1}, "strength: 0.1 with 6 steps runs no denoising step"),
    ({"mode": "draft-v2v", "final_preset": "tiny-i2v-a14b"}, "final_preset: tiny-i2v-a14b cannot run draft-v2v"),
    ({"mode": "draft-v2v", "final_preset": "tiny-ti2v"}, "final_preset: tiny-ti2v cannot run draft-v2v"),
    ({"mode": "first-frame", "frame_index": -1}, "frame_index: -1 must be an integer >= 0"),
    ({"mode": "first-frame"}, "final_preset: tiny-t2v-a14b is text-to-video only; first-frame needs"),
    ({"final_preset": "tiny-i2v-a14b"}, "final_preset: tiny-i2v-a14b is image-to-video only"),
    ({"width": 70}, "width: 70 must be a multiple of 16 on tiny-t2v-a14b"),
    ({"num_frames": 8}, "num_frames: 8 must be 4k+1"),
    ({"seed": 2**33}, "seed: 8589934592 is out of range"),
    ({"lock_name": "bad name"}, "lock_name: 'bad name' is not a valid lock name"),
])
def test_bad_requests_name_the_field(no_model, fields, message):
    with pytest.raises(TransferError) as err:
        FinalRequest(**{"lock_name": "hero", "final_preset": "tiny-t2v-a14b", **fields})
    assert message in str(err.value)


def test_frame_past_the_drafts_end_and_missing_lock_fail_before_downloading(locked, no_model, monkeypatch):
    store, _, folder = locked
    monkeypatch.setattr("wanflow.locks.Lock.download", lambda *a: pytest.fail("nothing may download"))
    request = FinalRequest(lock_name="hero", final_preset="tiny-i2v-a14b", mode="first-frame", frame_index=9)
    with pytest.raises(TransferError, match=r"frame_index: 9 is past the draft's last frame .*9 frames, 0..8"):
        plan_final(request, store)
    with pytest.raises(ValueError, match="name: no lock called 'ghost'"):
        plan_final(FinalRequest(lock_name="ghost", final_preset="tiny-t2v-a14b"), store)
    # a replay whose frame is past every named lock's end is refused before any notebook runs or run is made
    from wanflow.replay import replay

    runs = len(wanflow.history(store))
    with pytest.raises(TransferError, match=r"frame_index: 9 is past the last frame of every lock named \(the "
                                            r"longest, 'hero', has 9 frames, 0..8\)"):
        replay(["hero"], final_preset="tiny-i2v-a14b", mode="first-frame", frame_index=9, tracking_uri=store,
               out_dir=folder / "replay", report=lambda _: None)
    assert len(wanflow.history(store)) == runs


def test_final_spec_id_names_the_request_not_chance(monkeypatch):
    a = FinalRequest(lock_name="hero", final_preset="tiny-t2v-a14b", mode="draft-v2v", strength=0.5)
    assert a.final_spec_id("run1") == FinalRequest(lock_name="hero", final_preset="tiny-t2v-a14b", mode="draft-v2v",
                                                   strength=0.5, frame_index=3, seed=-1).final_spec_id("run1")
    assert a.final_spec_id("run1") != a.final_spec_id("run2")
    assert a.final_spec_id("run1") != FinalRequest(lock_name="hero", final_preset="tiny-t2v-a14b", mode="draft-v2v",
                                                   strength=0.4).final_spec_id("run1")
    assert a.final_spec_id("run1") != FinalRequest(lock_name="hero", final_preset="tiny-t2v-a14b", mode="draft-v2v",
                                                   strength=0.5, seed=1).final_spec_id("run1")
    # a draft-v2v final made at another flow shift is another final: a replay does not skip it as done
    at_shift_1 = a.final_spec_id("run1")
    monkeypatch.setattr(transfer, "DRAFT_V2V_FLOW_SHIFT", 5.0)
    assert a.final_spec_id("run1") != at_shift_1


def test_spec_checks_video_inputs(locked):
    _, draft, _ = locked
    with pytest.raises(ValueError, match="strength: only for video-to-video"):
        RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, strength=0.5)
    with pytest.raises(ValueError, match="video: video-to-video runs on text-to-video A14B-structure presets"):
        RenderSpec(preset="tiny-ti2v", prompt=PROMPT, video=str(draft.video))
    with pytest.raises(ValueError, match="video: .* does not exist"):
        RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, video="/nonexistent.mp4")
    spec = RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=1, video=str(draft.video))
    assert spec.strength == 0.8 and spec.task == "v2v" and spec.denoising_steps == 4 and spec.video_sha256
    # specs without video keep their version-1 canonical form (and so their ids)
    assert "video" not in RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1).canonical_json()


def test_shared_pipelines_keep_the_loaded_dtype():
    # from_pipe would cast the shared weights to float32 in place; loading builds the other pipelines without it
    clear_cache()
    try:
        options = LoadOptions(device="cpu", dtype="bfloat16")
        t2v = load_pipeline(get_preset("tiny-t2v-a14b"), "t2v", options).pipe
        kept_fp32 = {n: p.dtype for n, p in t2v.transformer.named_parameters() if p.dtype == torch.float32}
        v2v = load_pipeline(get_preset("tiny-t2v-a14b"), "v2v", options).pipe
        assert v2v.transformer.transformer is t2v.transformer and v2v.vae is t2v.vae
        assert t2v.transformer_2.dtype == torch.bfloat16
        after = {n: p.dtype for n, p in t2v.transformer.named_parameters() if p.dtype == torch.float32}
        assert after == kept_fp32
        ti2v = load_pipeline(get_preset("tiny-ti2v"), "t2v", options).pipe
        i2v = load_pipeline(get_preset("tiny-ti2v"), "i2v", options).pipe
        assert i2v.transformer is ti2v.transformer and ti2v.transformer.dtype == torch.bfloat16
        assert i2v.config.expand_timesteps
    finally:
        clear_cache()
