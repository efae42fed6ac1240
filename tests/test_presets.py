"""Presets carry the official settings; tiny models have the real structures and load like real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline

from wanflow import tiny
from wanflow.loading import LoadOptions, ModelNotFoundError, find_model, load_pipeline
from wanflow.presets import PRESETS, UnknownPresetError, get_preset

# FACTS.md §1 (wan/configs/*.py, generate.py)
OFFICIAL = {
    "ti2v-5b": dict(steps=50, shift=5.0, g=5.0, g2=None, boundary=None, frames=81 + 40, fps=24, size=(1280, 704)),
    "t2v-a14b": dict(steps=40, shift=12.0, g=4.0, g2=3.0, boundary=0.875, frames=81, fps=16, size=(1280, 720)),
    "i2v-a14b": dict(steps=40, shift=5.0, g=3.5, g2=3.5, boundary=0.900, frames=81, fps=16, size=(1280, 720)),
}


@pytest.mark.parametrize("name", OFFICIAL)
def test_real_presets_have_official_settings(name):
    preset, want = get_preset(name), OFFICIAL[name]
    assert preset.num_inference_steps == want["steps"]
    assert preset.flow_shift == want["shift"]
    assert (preset.guidance_scale, preset.guidance_scale_2) == (want["g"], want["g2"])
    assert preset.boundary_ratio == want["boundary"]
    assert preset.num_frames == want["frames"] and (preset.num_frames - 1) % 4 == 0
    assert preset.fps == want["fps"]
    assert (preset.width, preset.height) == want["size"]
    assert preset.hub_id.startswith("Wan-AI/Wan2.2-") and preset.hub_id.endswith("-Diffusers")


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UnknownPresetError, match="ti2v-5b.*t2v-a14b"):
        get_preset("wan-9000")


@pytest.mark.parametrize(
    "name, z_dim, spatial, in_channels, experts",
    [("tiny-ti2v", 48, 16, 48, 1), ("tiny-t2v-a14b", 16, 8, 16, 2), ("tiny-i2v-a14b", 16, 8, 36, 2)],
)
def test_tiny_models_have_the_real_structure(name, z_dim, spatial, in_channels, experts):
    preset = get_preset(name)
    pipe = load_pipeline(preset, preset.tasks[0]).pipe
    assert pipe.vae.config.z_dim == z_dim
    assert pipe.vae.config.scale_factor_spatial == spatial
    assert pipe.vae.config.scale_factor_temporal == 4
    assert pipe.transformer.config.in_channels == in_channels
    assert (pipe.transformer_2 is not None) == (experts == 2)
    assert pipe.config.boundary_ratio == preset.boundary_ratio
    assert pipe.config.expand_timesteps == (name == "tiny-ti2v")
    assert type(pipe.text_encoder).__name__ == "UMT5EncoderModel"


def test_tiny_model_is_a_diffusers_folder_read_back_by_from_pretrained():
    folder = tiny.materialize(get_preset("tiny-t2v-a14b"))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["boundary_ratio"] == 0.875
    for component in ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / component).is_dir(), component
    pipe = DiffusionPipeline.from_pretrained(folder)
    ids = pipe.tokenizer("A red CIRCLE zorp").input_ids
    vocab = pipe.tokenizer.get_vocab()
    assert ids == [vocab["a"], vocab["red"], vocab["circle"], vocab["<unk>"], vocab["</s>"]]


def test_pipeline_is_cached_between_renders(monkeypatch):
    preset = get_preset("tiny-ti2v")
    first = load_pipeline(preset, "t2v")
    calls = []
    original = DiffusionPipeline.from_pretrained.__func__
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(a) or original(cls, *a, **k)))
    second = load_pipeline(preset, "t2v")
    i2v = load_pipeline(preset, "i2v")
    assert second.pipe is first.pipe and second.from_cache
    assert type(i2v.pipe).__name__ == "WanImageToVideoPipeline"
    assert i2v.pipe.transformer is first.pipe.transformer  # one set of weights for both tasks
    assert calls == []


def test_missing_real_model_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as err:
        find_model(get_preset("t2v-a14b"))
    message = str(err.value)
    assert str(tmp_path / "Wan2.2-T2V-A14B-Diffusers") in message
    assert "Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "hf download Wan-AI/Wan2.2-T2V-A14B-Diffusers" in message


def test_incomplete_model_dir_names_the_missing_component(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "vae": ["diffusers", "AutoencoderKLWan"]}))
    with pytest.raises(ModelNotFoundError, match="missing component folder.*vae"):
        find_model(get_preset("ti2v-5b"), tmp_path / "broken")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        find_model(get_preset("ti2v-5b"), tmp_path / "nowhere")


def test_wrong_checkpoint_for_preset_is_refused():
    folder = tiny.materialize(get_preset("tiny-t2v-a14b"))
    with pytest.raises(ValueError, match="boundary_ratio"):
        load_pipeline(get_preset("ti2v-5b"), "t2v", LoadOptions(model_dir=str(folder)))


def test_load_options_resolve_and_reject():
    assert LoadOptions(device="cpu").torch_dtype() == torch.float32
    assert LoadOptions(device="cpu", dtype="bfloat16").as_tags()["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        LoadOptions(device="cpu", dtype="fp8").torch_dtype()
    with pytest.raises(ValueError, match="device"):
        LoadOptions(device="tpu:9").torch_device()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            LoadOptions(device="cuda").torch_device()


def test_every_preset_summarises():
    for preset in PRESETS.values():
        row = preset.summary()
        assert row["experts"] == (2 if preset.boundary_ratio else 1)
