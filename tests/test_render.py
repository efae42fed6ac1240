"""Rendering every tiny preset end to end: frames, files, experts per step, settings reaching the pipeline, MLflow."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import wanflow
from wanflow.generate import generate
from wanflow.loading import load_pipeline
from wanflow.media import probe_video
from wanflow.presets import get_preset
from wanflow.spec import RenderSpec
from wanflow.tracking import ROOT_ARTIFACTS

from .conftest import PROMPT
from .experts import assert_routed, observe_experts


@pytest.mark.parametrize("name", ["tiny-ti2v", "tiny-t2v-a14b", "tiny-i2v-a14b"])
def test_each_tiny_preset_renders_an_h264_mp4(name, tmp_path, store, red_image):
    preset = get_preset(name)
    image = str(red_image) if preset.tasks == ("i2v",) else None
    spec = RenderSpec(preset=name, prompt=PROMPT, seed=3, image=image)
    result = wanflow.render(spec, out_dir=tmp_path / "out", tracking_uri=store, progress=False)
    video = probe_video(result.video)
    assert video["codec"] == "h264"
    assert video["pix_fmt"].startswith("yuv420p")
    assert video["frames"].shape == (preset.num_frames, preset.height, preset.width, 3)
    assert video["fps"] == preset.fps
    assert json.loads(video["tags"]["comment"]) == json.loads(spec.canonical_json())
    assert result.frames.shape == (9, 64, 64, 3) and result.frames.dtype == np.uint8
    assert result.frames.std() > 1.0  # a real decode, not a blank array
    # lossy H.264 (and 4:2:0 chroma) blurs the tiny model's pixel noise, but keeps each frame's mean colour
    means = lambda f: f.reshape(len(f), -1, 3).mean(axis=1)  # noqa: E731
    assert np.abs(means(video["frames"].astype(float)) - means(result.frames.astype(float))).max() < 3
    assert sorted(p.name for p in result.out_dir.iterdir()) == sorted(ROOT_ARTIFACTS)


@pytest.mark.parametrize("name", ["tiny-t2v-a14b", "tiny-i2v-a14b"])
def test_boundary_splits_experts_and_guidance(name, monkeypatch, red_image):
    preset = get_preset(name)
    spec = RenderSpec(preset=name, prompt=PROMPT, seed=0, num_inference_steps=10, guidance_scale=4.0,
                      guidance_scale_2=2.0, image=str(red_image) if name.startswith("tiny-i2v") else None)
    pipe = load_pipeline(preset, spec.task).pipe
    with observe_experts(monkeypatch, {n: getattr(pipe, n) for n in ("transformer", "transformer_2")}) as seen:
        generation = generate(spec, progress=False)
    boundary = preset.boundary_ratio * 1000
    assert len(seen) == 10
    experts = assert_routed(seen, generation.steps, boundary, 4.0, 2.0)
    assert "transformer" in experts and "transformer_2" in experts
    assert experts == sorted(experts)  # high noise first, one hand-over


def test_single_expert_preset_runs_transformer_every_step():
    generation = generate(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=0), progress=False)
    assert [s.expert for s in generation.steps] == ["transformer"] * 4
    assert generation.expert_schedule == "transformer:0-3"


def test_official_flow_shift_reaches_the_scheduler():
    # The tiny A14B model's scheduler config says flow_shift=3.0, like the Diffusers conversion; wanflow sets 12.0.
    assert load_pipeline(get_preset("tiny-t2v-a14b"), "t2v").pipe.scheduler.config.flow_shift in (3.0, 12.0)
    official = generate(RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=0, num_inference_steps=10), progress=False)
    assert official.scheduler["flow_shift"] == 12.0
    lower = generate(RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=0, num_inference_steps=10,
                                flow_shift=3.0), progress=False)
    assert lower.scheduler["flow_shift"] == 3.0
    high_noise = lambda g: sum(s.expert == "transformer" for s in g.steps)  # noqa: E731
    # a larger shift keeps more steps at high noise, so the high-noise expert runs longer
    assert high_noise(official) > high_noise(lower)
    assert official.steps[0].timestep > lower.steps[1].timestep


def test_same_spec_gives_bit_identical_frames_and_spec_json_rerenders(tmp_path, store):
    spec = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=11)
    first = wanflow.render(spec, out_dir=tmp_path / "a", tracking_uri=store, progress=False)
    second = wanflow.render(spec, out_dir=tmp_path / "b", tracking_uri=store, progress=False)
    assert np.array_equal(first.frames, second.frames)
    again = RenderSpec.load(first.files.spec)
    assert again == spec
    third = wanflow.render(again, out_dir=tmp_path / "c", log=False, progress=False)
    assert np.array_equal(third.frames, first.frames)
    other = wanflow.render(spec.model_copy(update={"seed": 12}), out_dir=tmp_path / "d", log=False, progress=False)
    assert not np.array_equal(other.frames, first.frames)


def test_frames_hash_is_logged_and_a_rerender_says_whether_it_matched(tmp_path, store):
    spec = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=21)
    first = wanflow.render(spec, out_dir=tmp_path / "a", tracking_uri=store, progress=False)
    client = MlflowClient(store)
    tags = client.get_run(first.run_id).data.tags
    assert first.frames_match is None and "rerender_of" not in tags
    assert tags["frames_sha256"] == first.generation.frames_sha256 and len(tags["frames_sha256"]) == 64
    second = wanflow.render(spec, out_dir=tmp_path / "b", tracking_uri=store, progress=False)
    assert second.frames_match is True and second.earlier_run_id == first.run_id
    assert client.get_run(second.run_id).data.tags["frames_match"] == "true"
    client.set_tag(first.run_id, "frames_sha256", "0" * 64)  # as if the first ran on another torch build
    third = wanflow.render(spec, out_dir=tmp_path / "c", tracking_uri=store, progress=False)
    assert third.frames_match is False and client.get_run(third.run_id).data.tags["frames_match"] == "false"
    other_seed = wanflow.render(spec.model_copy(update={"seed": 22}), out_dir=tmp_path / "d", tracking_uri=store,
                                progress=False)
    assert other_seed.frames_match is None


def test_image_to_video_on_tiny_ti2v_uses_the_i2v_pipeline(tmp_path, red_image):
    spec = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1, image=str(red_image))
    result = wanflow.render(spec, out_dir=tmp_path, log=False, progress=False)
    assert result.generation.pipeline_class == "WanImageToVideoPipeline"
    assert result.frames.shape == (9, 64, 64, 3)


def test_run_holds_params_tags_metrics_and_root_artifacts(tmp_path, store):
    spec = RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=5)
    steps = []
    result = wanflow.render(spec, out_dir=tmp_path, tracking_uri=store, progress=False, on_step=steps.append)
    assert [s.step for s in steps] == list(range(6)) and steps[-1].total == 6
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == spec.to_params()
    tags = run.data.tags
    assert tags["stage"] == "draft" and tags["preset"] == "tiny-t2v-a14b" and tags["spec_id"] == spec.spec_id
    assert tags["model_source"] == "tiny" and tags["model_revision"] == "tiny-v1"
    assert tags["device"] == "cpu" and tags["dtype"] == "float32"
    assert tags["torch_version"] == torch.__version__ and tags["wanflow_version"] == wanflow.__version__
    assert tags["diffusers_version"] and tags["expert_schedule"].startswith("transformer:0-")
    metrics = run.data.metrics
    for key in ("load_s", "text_encode_s", "denoise_s", "decode_s", "encode_s", "log_s", "s_per_step",
                "peak_memory_gib", "flicker"):
        assert metrics[key] >= 0, key
    assert metrics["steps_transformer"] + metrics["steps_transformer_2"] == 6
    assert metrics["s_per_step"] == pytest.approx(metrics["denoise_s"] / 6)
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(result.run_id)}
    assert artifacts == set(ROOT_ARTIFACTS)
    table = wanflow.history(store)
    row = table.set_index("run_id").loc[result.run_id]
    assert row["prompt"] == PROMPT and row["seed"] == 5 and row["stage"] == "draft"
    assert row["denoise_s"] == pytest.approx(metrics["denoise_s"])


def test_failed_render_ends_failed_with_the_error(tmp_path, store, monkeypatch):
    render_module = importlib.import_module("wanflow.rendering")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(render_module, "generate", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1), out_dir=tmp_path / "o",
                       tracking_uri=store, progress=False)
    (run_id,) = wanflow.history(store)["run_id"]
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED"
    assert "out of memory (simulated)" in run.data.tags["error"]
    assert {a.path for a in MlflowClient(store).list_artifacts(run_id)} == {"error.txt"}
    assert not (tmp_path / "o" / "video.mp4").exists()


def test_unwritable_out_dir_fails_before_any_run(tmp_path, store):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="out_dir"):
        wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1), out_dir=blocker / "sub",
                       tracking_uri=store, progress=False)
    assert wanflow.history(store).empty


def test_unreachable_tracking_server_fails_before_the_model_loads(tmp_path, monkeypatch):
    render_module = importlib.import_module("wanflow.rendering")

    monkeypatch.setattr(render_module, "generate", lambda *a, **k: pytest.fail("model must not load"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(wanflow.TrackingError, match="127.0.0.1:9"):
        wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1), out_dir=tmp_path,
                       tracking_uri="http://127.0.0.1:9", progress=False)


def test_prompt_past_512_tokens_warns_and_is_recorded(tmp_path, store):
    long_prompt = " ".join(["a red circle moving left"] * 110)  # 550 words + </s>
    with pytest.warns(UserWarning, match="prompt: 551 tokens; the text encoder reads the first 512"):
        result = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=long_prompt, seed=1), out_dir=tmp_path,
                                tracking_uri=store, progress=False)
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags["prompt_truncated"] == "true" and run.data.metrics["prompt_tokens"] == 551
    assert run.data.params["prompt"] == long_prompt  # the param keeps the whole prompt
    short = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1), out_dir=tmp_path / "s",
                           tracking_uri=store, progress=False)
    assert MlflowClient(store).get_run(short.run_id).data.tags["prompt_truncated"] == "false"


def test_text_is_encoded_at_its_own_length_with_the_values_of_512_padded_tokens():
    """encode_text reads only the longer text's tokens (not 512) and returns what diffusers computes from 512 padded
    tokens: the micro models' trained UMT5 encoder, prompt and a longer negative prompt."""
    from wanflow.generate import encode_text
    from wanflow.loading import LoadOptions

    pipe = load_pipeline(get_preset("micro-ti2v"), "t2v", LoadOptions(device="cpu")).pipe
    prompt, negative = "a red circle moving left", "a blue square moving up on a green background, still"
    seen = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        ours = encode_text(pipe, prompt, negative, torch.device("cpu"))
    finally:
        hook.remove()
    reference = pipe.encode_prompt(prompt=prompt, negative_prompt=negative, do_classifier_free_guidance=True,
                                   max_sequence_length=512, device=torch.device("cpu"))
    lengths = [len(pipe.tokenizer(text).input_ids) for text in (prompt, negative)]
    assert lengths == [6, 12] and seen == [12, 12]  # both texts read at the longer one's length
    for got, want, length in zip(ours, reference, lengths):
        assert got.shape == want.shape == (1, 512, pipe.text_encoder.config.d_model)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        assert int(got[0].abs().sum(-1).gt(0).sum()) == length  # zeros past the text, as diffusers makes them
    no_cfg = encode_text(pipe, prompt, None, torch.device("cpu"))
    assert no_cfg[1] is None and torch.allclose(no_cfg[0], ours[0], atol=1e-5)
