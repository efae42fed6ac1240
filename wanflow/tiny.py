"""Tiny models: random weights in the exact structure of each Wan2.2 variant, built on the fly.

They exist so that every code path (two experts, boundary, 48- vs 16-channel VAE, image-to-video with 36 input
channels, ``expand_timesteps``) runs in tests in seconds. They are saved with ``save_pretrained`` and loaded back
through :func:`wanflow.loading.load_pipeline`, the same code that loads real checkpoints, so the Diffusers layout
itself is tested. Their output is noise by design; the micro models (``wanflow.micro``) are the ones that draw.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel

from wanflow import text
from wanflow.presets import SMALL_ROPE_MAX_SEQ_LEN, Preset, Structure

#: Bump when the tiny builders change, so cached copies are rebuilt.
TINY_FORMAT = 1


def build_vae(
    structure: Structure, base_dim: int = 8, dim_mult: tuple[int, ...] = (1, 1, 1, 1), num_res_blocks: int = 1
) -> AutoencoderKLWan:
    """A Wan VAE with random weights: the Wan2.2 VAE for ``ti2v-5b`` (z_dim 48, patch_size 2, 16x spatial,
    residual) or the Wan2.1 VAE for the A14B structures (z_dim 16, 8x spatial); 4x temporal for both
    (``FACTS.md`` §1). Latent mean 0 and std 1: the real per-channel statistics fit only real weights.

    ``dim_mult`` (channel multiplier per resolution level, 4 levels = 3 spatial downsamplings) and
    ``num_res_blocks`` are exposed for the micro models (:mod:`wanflow.micro.train`); the defaults are the tiny ones."""
    dim_mult = list(dim_mult)
    if structure == "ti2v-5b":
        return AutoencoderKLWan(
            base_dim=base_dim, decoder_base_dim=base_dim, z_dim=48, in_channels=12, out_channels=12,
            is_residual=True, patch_size=2, dim_mult=dim_mult, num_res_blocks=num_res_blocks,
            temperal_downsample=[False, True, True], latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
            scale_factor_spatial=16, scale_factor_temporal=4,
        )
    return AutoencoderKLWan(
        base_dim=base_dim, z_dim=16, dim_mult=dim_mult, num_res_blocks=num_res_blocks,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
        scale_factor_spatial=8, scale_factor_temporal=4,
    )


def build_transformer(
    structure: Structure, text_dim: int, heads: int = 2, head_dim: int = 12, layers: int = 2, ffn_dim: int = 32,
    freq_dim: int = 32,
) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` with random weights: 48 in/out channels for ``ti2v-5b``, 16/16 for
    ``t2v-a14b``, 36 in (noise 16 + mask 4 + image latents 16) / 16 out for ``i2v-a14b``. ``freq_dim`` is the
    width of the sinusoidal timestep embedding (256 in the real models)."""
    in_channels, out_channels = {"ti2v-5b": (48, 48), "t2v-a14b": (16, 16), "i2v-a14b": (36, 16)}[structure]
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim,
        ffn_dim=ffn_dim, num_layers=layers, rope_max_seq_len=SMALL_ROPE_MAX_SEQ_LEN,
    )


def build_scheduler(structure: Structure) -> UniPCMultistepScheduler:
    """The scheduler as the Diffusers conversions of Wan2.2 ship it: UniPC with flow sigmas. The A14B conversions
    bake ``flow_shift=3.0`` (not the official 12.0 / 5.0; Wan-Video/Wan2.2 issue 69); the tiny models copy that
    flaw on purpose so tests prove wanflow overrides it."""
    shift = 5.0 if structure == "ti2v-5b" else 3.0
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=shift
    )


def build_pipeline(preset: Preset, seed: int = 0, text_dim: int = 32) -> WanPipeline | WanImageToVideoPipeline:
    """All components of ``preset``'s structure with random weights (from ``seed``), as the pipeline class its
    real Diffusers checkpoint declares in ``model_index.json``."""
    torch.manual_seed(seed)
    tokenizer = text.build_tokenizer()
    components = dict(
        tokenizer=tokenizer,
        text_encoder=text.build_text_encoder(len(tokenizer), d_model=text_dim),
        vae=build_vae(preset.structure),
        scheduler=build_scheduler(preset.structure),
        transformer=build_transformer(preset.structure, text_dim),
        transformer_2=build_transformer(preset.structure, text_dim) if preset.two_experts else None,
        boundary_ratio=preset.boundary_ratio,
        expand_timesteps=preset.expand_timesteps,
    )
    if preset.structure == "i2v-a14b":
        return WanImageToVideoPipeline(image_processor=None, image_encoder=None, **components)
    return WanPipeline(**components)


def cache_root() -> Path:
    """Where built tiny models are kept: ``$WANFLOW_CACHE`` or ``~/.cache/wanflow``."""
    return Path(os.environ.get("WANFLOW_CACHE", Path.home() / ".cache" / "wanflow"))


def materialize(preset: Preset) -> Path:
    """The Diffusers-layout directory of a tiny preset, built and saved on first use.

    The directory is written under a temporary name and renamed into place, so a crash never leaves a half-saved
    model that later looks complete.
    """
    if preset.kind != "tiny":
        raise ValueError(f"preset: {preset.name!r} is {preset.kind}, not tiny")
    target = cache_root() / "tiny" / f"{preset.name}-v{TINY_FORMAT}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{preset.name}-", dir=target.parent))
    try:
        build_pipeline(preset).save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race: its copy is complete
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
