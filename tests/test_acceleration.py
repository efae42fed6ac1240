"""The fast path's switches and the approximations, as far as a CPU can check them (speed is in bench/)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import wanflow
from wanflow import acceleration
from wanflow.loading import LoadOptions, clear_cache, load_pipeline
from wanflow.presets import get_preset
from wanflow.spec import RenderSpec
from tests.conftest import PROMPT


def test_approximations_are_a_set_in_the_spec_and_leave_old_ids_alone():
    plain = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1)
    cached = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1, approximations="fp8, first-block-cache,fp8")
    assert cached.approximations == ("first-block-cache", "fp8")
    assert "approximations" not in plain.canonical_json()  # specs made before the field keep their ids
    assert cached.spec_id != plain.spec_id
    assert cached.to_params()["approximations"] == "first-block-cache,fp8"
    assert plain.to_params()["approximations"] == "none"
    assert RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1, approximations="none") == plain  # param round trip
    assert RenderSpec.model_validate_json(cached.canonical_json()) == cached
    with pytest.raises(ValueError, match=r"approximations: unknown 'turbo'; allowed: first-block-cache, fp8"):
        RenderSpec(preset="tiny-ti2v", prompt=PROMPT, approximations=["turbo"])
    with pytest.raises(ValueError, match=r"approximations: 'none' \(exact\) cannot be combined with taylorseer"):
        RenderSpec(preset="tiny-ti2v", prompt=PROMPT, approximations="none,taylorseer")
    with pytest.raises(ValueError, match=r"approximations: 3 is not a list of names"):
        RenderSpec(preset="tiny-ti2v", prompt=PROMPT, approximations=3)


def test_gpu_only_approximations_are_refused_on_cpu_before_a_run(store, tmp_path):
    spec = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1, approximations=["fp8"])
    with pytest.raises(ValueError, match=r"approximations: fp8 runs on CUDA GPUs only"):
        wanflow.render(spec, options=LoadOptions(device="cpu"), tracking_uri=store, out_dir=tmp_path / "out")
    assert wanflow.history(store).empty
    assert not (tmp_path / "out").exists()


def test_fp8_takes_the_blocks_bfloat16_linear_layers_and_refuses_other_dtypes():
    """fp8 quantizes the linear layers of the transformer blocks only: the embedders and proj_out in float8 turned
    the micro models' frames to NaN on an H200, and diffusers keeps the time embedder in float32 (torchao's
    per-row float8 asserts on it)."""
    import torch
    from diffusers import WanTransformer3DModel

    from wanflow.micro.train import WEIGHTS

    expert = WanTransformer3DModel.from_pretrained(WEIGHTS / "micro-ti2v" / "transformer", torch_dtype=torch.bfloat16)
    linear = {name: m for name, m in expert.named_modules() if isinstance(m, torch.nn.Linear)}
    taken = {name for name, m in linear.items() if acceleration.fp8_layer(m, name)}
    assert linear["condition_embedder.time_embedder.linear_1"].weight.dtype == torch.float32
    assert taken == {name for name in linear if name.startswith("blocks.")}
    assert len(taken) == 4 * 10  # 4 blocks x (attn1 q k v out, attn2 q k v out, ffn in and out)
    assert "proj_out" not in taken and "condition_embedder.time_proj" not in taken
    assert not acceleration.fp8_layer(torch.nn.Linear(24, 32).to(torch.bfloat16), "blocks.0.ffn.net.0.proj")
    # float32 weights are refused by name before anything loads (the check comes before any CUDA query)
    with pytest.raises(ValueError, match=r"approximations: fp8 quantizes bfloat16 weights; this render loads float32"):
        acceleration.check_approximations(["fp8"], torch.device("cuda"), torch.float32)


def test_cuda_index_past_the_gpu_count_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(acceleration.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(acceleration.torch.cuda, "device_count", lambda: 1)
    assert LoadOptions(device="cuda:0").torch_device() == acceleration.torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"device: 'cuda:1' asked for, but torch sees 1 CUDA GPU \(cuda:0\)"):
        LoadOptions(device="cuda:1").check()
    monkeypatch.setattr(acceleration.torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ValueError, match=r"torch sees 4 CUDA GPUs \(cuda:0 to cuda:3\)"):
        LoadOptions(device="cuda:7").torch_device()


def test_a_damaged_attention_cache_is_measured_again(tmp_path):
    path = tmp_path / "attention.json"
    for text in ("{trunc", "[]", "null"):
        path.write_text(text)
        assert acceleration._read_cache(path) == {}
    assert acceleration._read_cache(tmp_path / "missing.json") == {}
    path.write_text('{"k": {"backend": "native", "seconds": {}}}')
    assert acceleration._read_cache(path) == {"k": {"backend": "native", "seconds": {}}}


def test_offload_schemes_do_not_mix():
    with pytest.raises(ValueError, match="group_offload: cannot be combined with offload_model"):
        LoadOptions(offload_model=True, group_offload=True).check()


def test_fast_path_is_for_real_models_on_cuda():
    cpu = LoadOptions(device="cpu")
    assert not cpu.fast_for(get_preset("ti2v-5b"))
    assert not LoadOptions(device="cpu", fast=True).fast_for(get_preset("ti2v-5b"))  # nothing to gain on a CPU
    with pytest.raises(ValueError, match="fast: on needs a CUDA GPU; this render runs on cpu"):
        LoadOptions(device="cpu", fast=True).check()  # asked for explicitly: refused, not silently dropped
    assert acceleration.pick_attention(cpu.torch_device(), 24, 128, 27280) == ("native", {})


def test_tokens_per_forward_match_the_measured_table():
    # FACTS.md §2: 27,280 / 75,600 / 32,760 tokens
    assert get_preset("ti2v-5b").tokens() == 27280
    assert get_preset("t2v-a14b").tokens() == 75600
    assert get_preset("t2v-a14b").tokens(832, 480, 81) == 32760
    assert get_preset("tiny-ti2v").tokens() == 3 * 2 * 2


def test_benchmark_flop_count_matches_the_measured_table():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.fullsize import forward_flops

    ti2v = forward_flops("ti2v-5b", 27280)
    assert ti2v["total"] / 1e12 == pytest.approx(517, abs=1)
    assert ti2v["attention"] / ti2v["total"] == pytest.approx(0.53, abs=0.01)
    assert forward_flops("t2v-a14b", 75600)["total"] / 1e12 == pytest.approx(6523, abs=1)
    assert forward_flops("t2v-a14b", 32760)["total"] / 1e12 == pytest.approx(1678, abs=1)


def _attn_calls(expert) -> list[int]:
    """A counter of how often the last block's self-attention runs (the First Block Cache skips it)."""
    calls = [0]
    expert.blocks[-1].attn1.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _counted_render(spec: RenderSpec, store: str, out_dir: Path):
    """Render ``spec`` on the CPU with a counter on each expert's last block (:func:`_attn_calls`). Returns the
    loaded pipeline, the counters, the result and the steps each expert ran."""
    loaded = load_pipeline(spec.model, "t2v", LoadOptions(device="cpu"), spec.approximations)
    counts = {name: _attn_calls(getattr(loaded.pipe, name)) for name in ("transformer", "transformer_2")}
    result = wanflow.render(spec, options=LoadOptions(device="cpu"), tracking_uri=store, out_dir=out_dir,
                            progress=False)
    ran = {name: sum(1 for s in result.steps if s.expert == name) for name in counts}
    return loaded, counts, result, ran


def test_first_block_cache_skips_blocks_of_both_experts_and_is_tagged(store, tmp_path, monkeypatch):
    clear_cache()
    # a threshold no change reaches: every step after the first reuses the cached residual
    monkeypatch.setattr(acceleration, "FIRST_BLOCK_CACHE_THRESHOLD", 1e9)
    spec = RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=3, num_inference_steps=6,
                      approximations=["first-block-cache"])
    _, counts, _, steps = _counted_render(spec, store, tmp_path / "fbc")
    assert steps["transformer"] >= 2 and steps["transformer_2"] >= 2
    for name, calls in counts.items():
        # cond + uncond of the expert's first step run every block; the cached steps skip the tail blocks
        assert calls[0] == 2, (name, calls[0], steps[name])
    tags = wanflow.history(store).iloc[0]
    run = __import__("mlflow").MlflowClient(store).get_run(tags["run_id"])
    assert run.data.tags["approximations"] == "first-block-cache"
    assert run.data.tags["compiled"] == "false" and run.data.tags["attention_backend"] == "native"
    assert run.data.params["approximations"] == "first-block-cache"
    clear_cache()


def test_taylorseer_runs_the_blocks_on_its_fixed_schedule_per_expert_and_leaves_nothing_behind(store, tmp_path):
    """TaylorSeer (lite): each expert runs its blocks on the first max(3, ceil(0.3 n)) of its own n steps and then
    every 3rd, cond and uncond, unless it has fewer than 12 steps (then all of them); the cache is off again after
    the render, so a second render of the same spec gives the same frames."""
    import numpy as np

    from wanflow.generate import expert_steps

    clear_cache()
    spec = RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=3, num_inference_steps=24,
                      approximations=["taylorseer"])
    loaded, counts, first, ran = _counted_render(spec, store, tmp_path / "a")
    assert expert_steps(loaded.pipe, spec) == ran and sum(ran.values()) == 24
    assert [acceleration.taylorseer_warmup(n) for n in (4, 10, 11, 40)] == [3, 3, 4, 12]
    # warm-up 15 of 50, then steps 16, 19, ..., 49 (BENCHMARKS.md); 8 of 14 (A14B 720p's low-noise expert)
    assert acceleration.taylorseer_full_steps(50) == 27 and acceleration.taylorseer_full_steps(14) == 8
    assert ran == {"transformer": 16, "transformer_2": 8}  # shift 12: the high-noise expert has the most steps
    assert acceleration.TAYLORSEER_MIN_STEPS == 12
    for name, calls in counts.items():
        full = acceleration.taylorseer_full_steps(ran[name])
        assert full == (9 if name == "transformer" else 8), (name, full)  # 5 warm-up + 4 of 11; all 8 (< 12)
        assert calls[0] == 2 * full, (name, calls[0], ran)
        assert not getattr(loaded.pipe, name).is_cache_enabled
    again = wanflow.render(spec, options=LoadOptions(device="cpu"), tracking_uri=store, out_dir=tmp_path / "b",
                           progress=False)
    assert np.array_equal(first.frames, again.frames)
    run = __import__("mlflow").MlflowClient(store).get_run(first.run_id)
    assert run.data.tags["approximations"] == "taylorseer" and run.data.tags["compiled"] == "false"
    assert run.data.tags["taylorseer_full_steps"] == "transformer:9/16,transformer_2:8/8"  # what ran, per expert
    with pytest.raises(ValueError, match="first-block-cache and taylorseer are both step caches; pick one"):
        RenderSpec(preset="tiny-ti2v", prompt=PROMPT, approximations="taylorseer,first-block-cache")
    clear_cache()


def test_step_cache_hooks_run_eagerly_around_compiled_blocks():
    """compile_under_hooks: one compiled graph serves every block of both experts through a whole TaylorSeer render
    (no recompiles from the cache's state), the skipped steps do not call it, and the frames are those of the
    uncompiled render."""
    import numpy as np

    from wanflow.generate import run_pipeline

    graphs, calls = [0], [0]

    def counting_backend(graph, example_inputs):
        graphs[0] += 1

        def run(*args):
            calls[0] += 1
            return graph(*args)
        return run

    spec = RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=3, num_inference_steps=24,
                      approximations=["taylorseer"])
    frames = {}
    for compiled in (False, True):
        clear_cache()
        loaded = load_pipeline(spec.model, "t2v", LoadOptions(device="cpu"), spec.approximations)
        blocks = {}
        if compiled:
            for name in ("transformer", "transformer_2"):
                expert = getattr(loaded.pipe, name)
                blocks[name] = acceleration.compile_under_hooks(expert, backend=counting_backend, fullgraph=True)
                assert blocks[name] == len(expert.blocks) >= 2
        generation = run_pipeline(loaded, spec, progress=False)
        frames[compiled] = generation.frames
    ran = {name: sum(1 for s in generation.steps if s.expert == name) for name in blocks}
    assert graphs[0] == 1
    assert calls[0] == sum(2 * acceleration.taylorseer_full_steps(ran[name]) * blocks[name] for name in blocks)
    assert np.allclose(frames[True].astype(int), frames[False].astype(int), atol=1)
    clear_cache()


def test_exact_render_is_tagged_and_vae_tiling_reaches_the_vae():
    clear_cache()
    loaded = load_pipeline(get_preset("tiny-ti2v"), "t2v", LoadOptions(device="cpu", vae_tiling=True))
    assert loaded.pipe.vae.use_tiling
    assert loaded.acceleration == {"attention_backend": "native", "compiled": "false", "approximations": "none"}
    assert LoadOptions(device="cpu", vae_tiling=True).as_tags()["vae_tiling"] == "true"
    clear_cache()


@pytest.mark.parametrize("structure_preset, card_gib, mode", [
    ("ti2v-5b", 139.8, "none"),                                   # H200
    ("ti2v-5b", 23.99, "t5-cpu"),                                 # RTX 4090: 22.1 GiB budget, 21.3 measured
    ("ti2v-5b", 16.0, "model-offload+vae-tiling"),                # 14.6 GiB measured
    ("ti2v-5b", 12.0, "group-offload+t5-cpu+vae-tiling"),         # nothing measured fits
    ("t2v-a14b", 139.8, "none"),
    ("t2v-a14b", 79.15, "t5-cpu"),                                # A100-80GB: 74.1 GiB does not fit 72.8
    ("i2v-a14b", 39.4, "group-offload+t5-cpu+vae-tiling"),        # A100-40GB
])
def test_memory_plan_picks_the_fastest_measured_mode_that_fits(structure_preset, card_gib, mode):
    from wanflow.loading import MEMORY_MODES, plan_memory

    picked, why = plan_memory(get_preset(structure_preset), card_gib)
    assert picked == mode and why.startswith(mode) and f"{card_gib:.1f} GiB" in why
    assert picked in MEMORY_MODES


def test_memory_plan_applies_only_when_the_user_chose_nothing(monkeypatch):
    from wanflow import loading

    class Card:
        total_memory = 24 * 2**30

    monkeypatch.setattr(loading.LoadOptions, "torch_device", lambda self: __import__("torch").device("cuda"))
    monkeypatch.setattr(loading.torch.cuda, "get_device_properties", lambda device: Card())
    real = get_preset("ti2v-5b")
    planned, why = loading.resolve_memory(loading.LoadOptions(), real)
    assert (planned.t5_cpu, planned.offload_model, planned.vae_tiling) == (True, False, False)
    assert why.startswith("auto t5-cpu: measured peak 21.3 GiB")
    chosen = loading.LoadOptions(offload_model=True)
    assert loading.resolve_memory(chosen, real) == (chosen, "manual")
    off = loading.LoadOptions(auto_memory=False)
    assert loading.resolve_memory(off, real) == (off, "manual")
    tiny = loading.LoadOptions()
    assert loading.resolve_memory(tiny, get_preset("tiny-ti2v")) == (tiny, "not needed")


def test_a_cpu_render_records_that_no_memory_plan_was_needed(store, tmp_path):
    result = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=2), options=LoadOptions(device="cpu"),
                            tracking_uri=store, out_dir=tmp_path / "r", progress=False)
    assert result.memory_plan == "not needed"
    run = __import__("mlflow").MlflowClient(store).get_run(result.run_id)
    assert run.data.tags["memory_plan"] == "not needed"


def test_uniform_timestep_gives_ti2v_text_to_video_one_timestep_per_sample():
    """The exact fast path's TI2V text-to-video: the transformer gets one timestep per sample instead of one per
    token, the frames stay the same up to rounding, and the pipeline's flag comes back (also after a failure)."""
    import torch

    from wanflow.generate import run_pipeline

    clear_cache()
    spec = RenderSpec(preset="micro-ti2v", prompt=PROMPT, seed=5, num_inference_steps=4)
    loaded = load_pipeline(spec.model, "t2v", LoadOptions(device="cpu"))
    pipe = loaded.pipe
    shapes = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: shapes.append(tuple(kwargs["timestep"].shape)), with_kwargs=True)
    per_token = run_pipeline(loaded, spec, progress=False).frames  # CPU: fast path off, diffusers' per-token
    tokens = spec.model.tokens(spec.width, spec.height, spec.num_frames)
    assert set(shapes) == {(1, tokens)}
    shapes.clear()
    with acceleration.uniform_timestep(pipe):
        assert not pipe.config.expand_timesteps
        per_sample = pipe(prompt=PROMPT, height=spec.height, width=spec.width, num_frames=spec.num_frames,
                          num_inference_steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale,
                          generator=torch.Generator("cpu").manual_seed(spec.seed), output_type="np").frames
    hook.remove()
    assert set(shapes) == {(1,)} and pipe.config.expand_timesteps
    diff = np.abs(per_token.astype(int) - np.round(np.clip(per_sample[0], 0, 1) * 255).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    with pytest.raises(RuntimeError), acceleration.uniform_timestep(pipe):
        raise RuntimeError("render failed")
    assert pipe.config.expand_timesteps
    i2v = load_pipeline(spec.model, "i2v", LoadOptions(device="cpu")).pipe
    with acceleration.uniform_timestep(i2v):  # the image's frame has timestep 0: per token stays
        assert i2v.config.expand_timesteps
    with acceleration.uniform_timestep(pipe, enabled=False):
        assert pipe.config.expand_timesteps
    clear_cache()


def test_uint8_frames_on_the_device_equal_the_numpy_conversion():
    import torch

    from wanflow.generate import UINT8_CHUNK, uint8_frames
    from wanflow.media import to_uint8

    generator = torch.Generator().manual_seed(0)
    video = torch.rand(1, UINT8_CHUNK + 3, 3, 8, 10, generator=generator) * 1.2 - 0.1  # chunk edge, out of range
    video[0, 0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255])  # rounding ties
    expected = to_uint8(video[0].permute(0, 2, 3, 1).numpy())
    got = uint8_frames(video)
    assert got.dtype == np.uint8 and got.shape == (UINT8_CHUNK + 3, 8, 10, 3)
    assert np.array_equal(got, expected)
    assert np.array_equal(uint8_frames(video.to(torch.bfloat16)),
                          to_uint8(video.to(torch.bfloat16)[0].permute(0, 2, 3, 1).float().numpy()))
    with pytest.raises(ValueError, match=r"video: expected shape \(1, F >= 1, 3, H, W\)"):
        uint8_frames(video[0])
    with pytest.raises(ValueError, match=r"video: expected shape"):
        uint8_frames(video[:, :0])
    with pytest.raises(ValueError, match="video: expected a floating-point torch tensor, got Tensor of torch.uint8"):
        uint8_frames((video * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="got ndarray"):
        uint8_frames(video.numpy())


def test_channels_last_vae_decodes_the_same_frames():
    import torch

    clear_cache()
    vae = load_pipeline(get_preset("micro-ti2v"), "t2v", LoadOptions(device="cpu")).pipe.vae
    latents = torch.randn(1, vae.config.z_dim, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vae.decode(latents, return_dict=False)[0]
        convs = [m for m in vae.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
        assert acceleration.channels_last(vae) == len(convs) > 10
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last_3d if m.weight.ndim == 5
                                          else torch.channels_last) for m in convs)
        assert not all(m.weight.is_contiguous() for m in convs if m.weight.shape[-1] > 1)
        after = vae.decode(latents, return_dict=False)[0]
    assert after.shape == before.shape and torch.allclose(after, before, atol=1e-4)
    clear_cache()  # the cached pipeline's VAE was changed


FAKE_FA4 = '''
import torch

calls = []


@torch.compiler.disable  # like the real kernel's CuTe DSL launch, Dynamo cannot trace it
def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
    """Stands in for flash-attn-4's kernel on a CPU: (batch, tokens, heads, dim) in and out, plus the log-sum-exp."""
    calls.append(tuple(q.shape))
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2), None
'''


@pytest.fixture
def fake_flash_attention_4(tmp_path, monkeypatch):
    """An installed ``flash-attn-4`` 4.0.0b36 (a package on sys.path with its dist-info) whose kernel is SDPA, a
    Hopper GPU, and diffusers' FLASH_4_HUB entry restored afterwards."""
    from diffusers.models import attention_dispatch as dispatch

    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text(FAKE_FA4)
    info = tmp_path / "flash_attn_4-4.0.0b36.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flash-attn-4\nVersion: 4.0.0b36\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(acceleration.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(acceleration.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(acceleration.torch.cuda, "device_count", lambda: 2)
    acceleration._warn_once.cache_clear()
    config = dispatch._HUB_KERNELS_REGISTRY[dispatch.AttentionBackendName.FLASH_4_HUB]
    monkeypatch.setattr(config, "kernel_fn", None)
    yield config
    for name in ("flash_attn.cute", "flash_attn"):
        sys.modules.pop(name, None)


def test_flash_attention_4_needs_diffusers_requirements_and_a_gpu_it_has_kernels_for(fake_flash_attention_4,
                                                                                     monkeypatch):
    import importlib.util

    cuda = acceleration.torch.device("cuda")
    if importlib.util.find_spec("kernels") is None:  # diffusers refuses flash_4_hub without the kernels package
        with pytest.warns(RuntimeWarning, match=r"flash-attn-4 4.0.0b36 is installed but diffusers' flash_4_hub "
                                                r"backend refuses to run: .*kernels.*wanflow\[fa4\]"):
            assert acceleration.provide_flash_attention_4(cuda) is None
        assert fake_flash_attention_4.kernel_fn is None
    for device in ("cpu", "meta", "cuda:2"):  # no CUDA, or an index past the GPU count (2 GPUs here)
        assert acceleration.provide_flash_attention_4(acceleration.torch.device(device)) is None
    monkeypatch.setattr(acceleration.torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    monkeypatch.setattr("diffusers.models.attention_dispatch._check_attention_backend_requirements", lambda b: None)
    assert acceleration.provide_flash_attention_4(cuda) is None
    assert fake_flash_attention_4.kernel_fn is None


def test_flash_attention_4_that_fails_to_import_is_left_out_with_a_warning(fake_flash_attention_4, tmp_path,
                                                                           monkeypatch):
    (tmp_path / "flash_attn" / "__init__.py").write_text("raise OSError('libcuda.so.1: cannot open shared object')")
    monkeypatch.setattr("diffusers.models.attention_dispatch._check_attention_backend_requirements", lambda b: None)
    with pytest.warns(RuntimeWarning, match=r"flash-attn-4 4.0.0b36 is installed but cannot be imported "
                                            r"\(OSError: libcuda.so.1"):
        assert acceleration.provide_flash_attention_4(acceleration.torch.device("cuda")) is None
    assert fake_flash_attention_4.kernel_fn is None


def test_flash_attention_4_is_not_offered_without_the_package(monkeypatch):
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("flash-attn-4")
        pytest.skip("flash-attn-4 is installed here")
    except PackageNotFoundError:
        pass
    monkeypatch.setattr(acceleration.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(acceleration.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("diffusers.models.attention_dispatch._check_attention_backend_requirements", lambda b: None)
    assert acceleration.provide_flash_attention_4(acceleration.torch.device("cuda")) is None


def test_flash_attention_4_runs_through_diffusers_and_compiles_in_one_graph(fake_flash_attention_4, monkeypatch):
    import torch
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    monkeypatch.setattr("diffusers.models.attention_dispatch._check_attention_backend_requirements", lambda b: None)
    assert acceleration.provide_flash_attention_4(torch.device("cuda")) == "4.0.0b36"
    assert fake_flash_attention_4.kernel_fn is acceleration.flash_attention_4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU that runs the kernel from here on
    import warnings

    with warnings.catch_warnings(record=True) as seen:  # the CuTe DSL's first-call note is not shown to users
        warnings.warn("Argument aux_data (position 17) cannot be converted to a JitArgument for function 'f'",
                      UserWarning)
        warnings.warn("another UserWarning", UserWarning)
    assert [str(w.message) for w in seen] == ["another UserWarning"]
    import flash_attn.cute

    calls = flash_attn.cute.calls
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 2, 16, generator=g, dtype=torch.bfloat16) for _ in range(3))
    k, v = k[:, :5], v[:, :5]  # cross-attention: fewer key tokens than queries
    out = dispatch_attention_fn(q, k, v, backend="flash_4_hub")
    assert calls == [(1, 12, 2, 16)] and out.shape == (1, 12, 2, 16)
    native = dispatch_attention_fn(q, k, v, backend="native")
    assert (out.float() - native.float()).abs().max().item() < 1e-2

    def block(q, k, v):
        return dispatch_attention_fn(q, k, v, backend="flash_4_hub") * 2

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="eager")  # a graph break would raise here
    assert torch.equal(compiled(q, k, v), out * 2)
    assert len(calls) == 2
    fake_flash_attention_4.kernel_fn = flash_attn.cute.flash_attn_func  # the package's function as it is
    torch._dynamo.reset()
    with pytest.raises(Exception, match="(?i)skip|disable"):
        torch.compile(block, fullgraph=True, backend="eager")(q, k, v)
