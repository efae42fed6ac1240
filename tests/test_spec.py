"""RenderSpec: defaults from the preset, field-naming validation, canonical JSON and its hash."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from wanflow.spec import MAX_SEED, RenderSpec, explain

from .conftest import PROMPT


def make(**fields):
    return RenderSpec(**{"preset": "ti2v-5b", "prompt": PROMPT, "seed": 7, **fields})


def test_unset_fields_take_the_presets_official_values():
    spec = make()
    assert (spec.width, spec.height, spec.num_frames, spec.fps) == (1280, 704, 121, 24)
    assert (spec.num_inference_steps, spec.guidance_scale, spec.guidance_scale_2, spec.flow_shift) == (50, 5.0, None, 5.0)
    assert spec.negative_prompt.startswith("色调艳丽")
    a14b = RenderSpec(preset="t2v-a14b", prompt="x", seed=1)
    assert (a14b.guidance_scale, a14b.guidance_scale_2, a14b.flow_shift) == (4.0, 3.0, 12.0)


def test_missing_seed_is_drawn_and_kept():
    spec = RenderSpec(preset="tiny-ti2v", prompt=PROMPT)
    assert 0 <= spec.seed <= MAX_SEED
    again = RenderSpec.model_validate_json(spec.canonical_json())
    assert again.seed == spec.seed and again.spec_id == spec.spec_id


@pytest.mark.parametrize(
    "fields, field, words",
    [
        (dict(height=720), "height", "must be a multiple of 32 on ti2v-5b; 704 is the official size"),
        (dict(width=1000), "width", "multiple of 32"),
        (dict(preset="t2v-a14b", width=1288), "width", "multiple of 16"),
        (dict(num_frames=120), "num_frames", "must be 4k+1 (e.g. 117 or 121)"),
        (dict(guidance_scale_2=3.0), "guidance_scale_2", "only for two-expert presets"),
        (dict(seed=-1), "seed", f"0 to {MAX_SEED}"),
        (dict(seed=2**32), "seed", "out of range"),
        (dict(seed=1.5), "seed", "1.5 is not an integer; use an integer from 0 to"),
        (dict(prompt="   \n"), "prompt", "must not be empty"),
        (dict(num_inference_steps=0), "num_inference_steps", "allowed 1..1000"),
        (dict(flow_shift=0), "flow_shift", "out of range"),
        (dict(fps=0), "fps", "allowed 1..120"),
        (dict(preset="i2v-a14b"), "image", "image-to-video only"),
        (dict(preset="t2v-a14b", image="x.png"), "image", "text-to-video only"),
        (dict(image="/no/such/file.png"), "image", "does not exist"),
        (dict(preset="nope"), "preset", "unknown model 'nope'; choose one of: ti2v-5b"),
        (dict(colour="red"), "colour", "not a spec field; allowed fields: version, preset, prompt"),
        (dict(adapters=[{"path": "lora.safetensors"}]), "adapters", "not supported yet"),
        # the micro models' position embedding covers 32 positions per axis: larger renders crashed after loading
        (dict(preset="micro-ti2v", width=1056, height=32, num_frames=1), "width",
         "1056 is more than micro-ti2v can place; allowed at most 1024 (its position embedding covers 32 patches"),
        (dict(preset="micro-a14b", width=64, height=528, num_frames=1), "height", "allowed at most 512"),
        (dict(preset="micro-ti2v", width=32, height=32, num_frames=129), "num_frames",
         "129 is more than micro-ti2v can place; allowed at most 125"),
    ],
)
def test_bad_specs_name_the_field(fields, field, words):
    with pytest.raises(ValidationError) as err:
        make(**fields)
    text = explain(err.value)
    assert any(line.startswith(f"{field}:") and words in line for line in text.splitlines()), text


def test_all_problems_reported_at_once():
    with pytest.raises(ValidationError) as err:
        make(height=700, num_frames=10, guidance_scale_2=1.0)
    fields = [line.split(":")[0] for line in explain(err.value).splitlines()]
    assert fields == ["guidance_scale_2", "height", "num_frames"]


def test_non_image_file_is_rejected(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    with pytest.raises(ValidationError, match="image: .* is not an image PIL can read"):
        make(image=str(fake))


@pytest.mark.parametrize("suffix", ["gif", "webp"])
def test_animated_image_is_rejected_and_a_still_gif_is_accepted(tmp_path, suffix):
    """An animated image would silently start the video from its first frame: refused, with the frame count."""
    from PIL import Image

    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    animated = tmp_path / f"clip.{suffix}"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ValidationError, match=r"image: .*clip\.%s is animated \(3 frames\); image-to-video starts "
                       r"from one still image" % suffix):
        make(image=str(animated))
    still = tmp_path / f"still.{suffix}"
    frames[0].save(still)
    assert make(image=str(still)).task == "i2v"


def test_image_is_hashed_and_a_changed_image_is_caught(red_image):
    spec = make(image=str(red_image))
    assert spec.task == "i2v" and len(spec.image_sha256) == 64
    red_image.write_bytes(red_image.read_bytes() + b"\0")
    with pytest.raises(ValidationError, match="changed since this spec was made"):
        RenderSpec.model_validate_json(spec.canonical_json())


def test_canonical_json_and_spec_id():
    spec = make()
    payload = json.loads(spec.canonical_json())
    assert list(payload) == sorted(payload)
    assert spec.canonical_json() == make().canonical_json()
    assert spec.spec_id == make().spec_id and len(spec.spec_id) == 16
    assert make(seed=8).spec_id != spec.spec_id
    assert make(prompt=PROMPT + " ").spec_id != spec.spec_id


def test_save_and_load_round_trip(tmp_path):
    spec = make(prompt='quotes " and \\ and\nnewline, emoji 🎬, code "); import os #')
    path = spec.save(tmp_path / "spec.json")
    assert RenderSpec.load(path) == spec
    assert not list(tmp_path.glob(".*partial*"))


def test_params_are_strings_of_every_field():
    params = make().to_params()
    assert params["seed"] == "7" and params["height"] == "704" and params["guidance_scale_2"] == ""
    assert set(params) == set(RenderSpec.model_fields)


def test_the_largest_placeable_video_is_accepted_and_the_limits_match_the_models():
    import json
    from pathlib import Path

    import wanflow
    from wanflow.presets import PRESETS, SMALL_ROPE_MAX_SEQ_LEN
    from wanflow.tiny import build_transformer

    assert make(preset="micro-ti2v", width=1024, height=32, num_frames=125).num_frames == 125
    weights = Path(wanflow.__file__).parent / "micro" / "weights"
    for name in ("micro-ti2v/transformer", "micro-a14b/transformer", "micro-a14b/transformer_2"):
        config = json.loads((weights / name / "config.json").read_text())
        assert config["rope_max_seq_len"] == PRESETS[name.split("/")[0]].rope_max_seq_len == SMALL_ROPE_MAX_SEQ_LEN
    assert build_transformer("ti2v-5b", 16).config.rope_max_seq_len == PRESETS["tiny-ti2v"].rope_max_seq_len
    assert {p.rope_max_seq_len for p in PRESETS.values() if p.kind == "real"} == {1024}
    assert PRESETS["ti2v-5b"].max_side > 4096 and PRESETS["ti2v-5b"].max_frames > 1025  # never the binding limit
