"""Two-step CPU smoke of every micro training stage (VAEs + latent statistics, encoding, text encoder +
transformers, saving), and the saved folders load through the same code as real checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wanflow.loading import LoadOptions, clear_cache, load_pipeline
from wanflow.micro import data, evaluate, train
from wanflow.presets import get_preset


def test_render_clips_matches_numpy_renderer():
    clips = data.sample_clips(3, seed=5)
    video, mask = train.render_clips(train.clip_tensors(clips), 48, 32, 5)
    ours = np.rint((video.permute(0, 2, 3, 4, 1).numpy() + 1) * 127.5).astype(int)
    reference = data.batch(clips, 48, 32, 5).astype(int)
    assert np.abs(ours - reference).max() <= 1
    assert mask.shape == (3, 1, 5, 32, 48) and mask.sum() > 0


def test_sigmas_respect_expert_ranges():
    gen = torch.Generator().manual_seed(0)
    high = train.sample_sigmas(1000, 3.0, 0.875, 1.0, gen, "cpu")
    low = train.sample_sigmas(1000, 3.0, 0.0, 0.875, gen, "cpu")
    assert high.min() >= 0.875 - 1e-6 and high.max() <= 1.0
    assert low.max() < 0.875 and low.min() >= 0.0


def test_every_stage_two_steps_and_load(tmp_path):
    record = train.run(train.SMOKE, tmp_path, seed=0, device=torch.device("cpu"), log=lambda *_: None)
    assert record["vae_ti2v-5b"]["steps"] == 2 and record["vae_t2v-a14b"]["steps"] == 2
    assert record["transformers"]["steps"] == 2
    assert set(record["transformers"]["final_loss"]) == {"ti2v", "a14b_high", "a14b_low"}
    for name in ("micro-ti2v", "micro-a14b"):
        folder = tmp_path / name
        assert (folder / "VERSION").read_text().startswith(train.FORMAT)
        assert json.loads((folder / "TRAINING.json").read_text())["seed"] == 0
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
        assert len(vae_config["latents_std"]) == vae_config["z_dim"]
        loaded = load_pipeline(get_preset(name), "t2v", LoadOptions(device="cpu", model_dir=str(folder)))
        pipe = loaded.pipe
        assert (pipe.transformer_2 is not None) == (name == "micro-a14b")
        assert pipe.config.expand_timesteps == (name == "micro-ti2v")
    clear_cache()


def test_stages_run_apart_and_continue(tmp_path):
    """--stage vae, then --stage transformers --vaes (the split the device calls use), then --init continues from
    the saved models: each a two-step smoke through the CLI, the last one starting from the second one's weights."""
    vaes, first, second = tmp_path / "v", tmp_path / "t1", tmp_path / "t2"
    for structure in train.STRUCTURES:
        assert train.main(["--smoke", "--device", "cpu", "--stage", "vae", "--structure", structure,
                           "--out", str(vaes)]) == 0
    saved = json.loads((vaes / "vae-ti2v-5b" / "result.json").read_text())
    assert saved["steps"] == 2 and saved["config"]["vae_steps"] == 2 and saved["psnr_db"] > 0
    assert train.main(["--smoke", "--device", "cpu", "--stage", "transformers", "--vaes", str(vaes),
                       "--out", str(first)]) == 0
    assert train.main(["--smoke", "--device", "cpu", "--stage", "transformers", "--vaes", str(vaes),
                       "--init", str(first), "--seed", "1", "--lr", "1e-4", "--out", str(second)]) == 0
    record = json.loads((second / "micro-a14b" / "TRAINING.json").read_text())
    assert record["continues"]["seed"] == 0 and record["config"]["lr"] == 1e-4
    assert "--init" in record["reproduce"] and "--vaes" in record["reproduce"]
    # the VAEs travel unchanged from stage 1 into both saved models
    from safetensors.torch import load_file
    stage1 = load_file(vaes / "vae-t2v-a14b" / "diffusion_pytorch_model.safetensors")
    final = load_file(second / "micro-a14b" / "vae" / "diffusion_pytorch_model.safetensors")
    name = next(iter(stage1))
    assert torch.allclose(stage1[name].half(), final[name])
    # the continued transformers start from the first run's weights, not from random ones
    start = load_file(first / "micro-ti2v" / "transformer" / "diffusion_pytorch_model.safetensors")
    end = load_file(second / "micro-ti2v" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert max(float((start[k].float() - end[k].float()).abs().max()) for k in start) < 0.05

    # --only-a14b: micro-a14b's experts train, the text encoder and micro-ti2v come back bit for bit
    third = tmp_path / "t3"
    assert train.main(["--smoke", "--device", "cpu", "--stage", "transformers", "--vaes", str(vaes),
                       "--init", str(second), "--only-a14b", "--lr", "1e-2", "--out", str(third)]) == 0
    record = json.loads((third / "micro-a14b" / "TRAINING.json").read_text())
    assert set(record["transformers"]["final_loss"]) == {"a14b_high", "a14b_low"}
    assert "--only-a14b" in record["reproduce"]
    for sub, changed in (("micro-ti2v/transformer", False), ("micro-ti2v/text_encoder", False),
                         ("micro-a14b/text_encoder", False), ("micro-a14b/transformer", True),
                         ("micro-a14b/transformer_2", True)):
        file = "model.safetensors" if sub.endswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        before, after = load_file(second / sub / file), load_file(third / sub / file)
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same != changed, sub


@pytest.mark.parametrize("argv, message", [
    (["--stage", "transformers"], "--stage transformers needs --vaes"),
    (["--stage", "vae", "--vaes", "x"], "--vaes is only read by --stage transformers"),
    (["--stage", "all", "--init", "x"], "--init is only read by --stage transformers"),
    (["--stage", "transformers", "--vaes", "/nonexistent"], "--vaes: /nonexistent has no vae-ti2v-5b/config.json"),
    (["--structure", "ti2v-5b"], "--structure is only read by --stage vae"),
    (["--device", "bogus"], "'bogus' is not a device"),
    (["--vae-steps", "-1"], "-1 must be > 0"),
    (["--transformer-steps", "abc"], "'abc' is not an integer"),
    (["--vae-steps", "1,2,3"], "give one number or two"),
    (["--lr", "nan"], "nan must be > 0"),
    (["--stage", "transformers", "--vaes", "x", "--only-a14b"], "--only-a14b continues trained models"),
])
def test_bad_arguments_stop_before_any_work(argv, message, capsys):
    _refused(lambda: train.main(["--smoke", "--out", "unused", *argv]), message, capsys)


def _refused(call, message: str, capsys) -> None:
    """``call`` exits 2 with ``message`` on stderr and no traceback (argparse's way, before any work)."""
    with pytest.raises(SystemExit) as exit_:
        call()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--device", "quantum"], "'quantum' is not a device"),
    (["--batch", "0"], "0 must be > 0"),
    (["--weights", "/nonexistent"], "--weights: /nonexistent has no micro-ti2v/"),
    (["--strength", "0.3"], "--strength is only read by --transfer"),
    (["--grid", "--transfer"], "run one at a time"),
    (["--transfer", "--seeds", "-1"], "seed: -1 is out of range; use 0..4294967295"),
    (["--seeds", "99999999999999999999"], "seed: 99999999999999999999 is out of range"),
    (["--seeds", "1.5"], "seed: '1.5' is not an integer"),
])
def test_evaluate_refuses_bad_arguments_before_any_render(argv, message, capsys):
    _refused(lambda: evaluate.main(argv), message, capsys)


def test_budget_plans_the_total_from_timed_steps(monkeypatch):
    """A budgeted stage times steps 10..60 and keeps only the steps that fit: created at 0 s, step 10 at 1 s, step 60
    at 6 s (0.1 s a step) and a 21 s budget leave 20 s for 200 steps after step 10, so 210 in all."""
    ticks = [0.0, 1.0, 6.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: ticks.pop(0) if ticks else 100.0)
    budget = train._Budget(21.0, torch.device("cpu"), "x", log=lambda *_: None)
    assert budget.plan(5, 1000) == 1000 and budget.plan(10, 1000) == 1000
    assert budget.plan(60, 1000) == 210
    assert train._Budget(None, torch.device("cpu"), "x").plan(60, 1000) == 1000
    assert train._Budget(1e9, torch.device("cpu"), "x").plan(70, 1000) == 1000  # only step 60 plans


@pytest.mark.parametrize("strength", ["0", "1.5", "abc", "nan"])
def test_transfer_strength_is_checked_before_any_render(strength, capsys):
    _refused(lambda: evaluate.main(["--transfer", "--strength", strength]), "strength: ", capsys)
    with pytest.raises(ValueError, match="strength: 2.0 is out of range"):
        evaluate.transfer(strength=2.0)
