"""Full-size Wan2.2 pipelines with random weights, and the FLOP count of one transformer forward.

Compute does not depend on the weights' values, so a full-size model with random weights times a real render
without a checkpoint (``FACTS.md`` §2). Sizes are the real configs (FACTS.md §1; the Diffusers
conversions' ``config.json``): TI2V-5B 30 layers x 24 heads x 128, ffn 14336, in/out 48; A14B experts 40 x 40 x 128,
ffn 13824, in/out 16 (diffusers' ``WanTransformer3DModel`` defaults); UMT5-XXL text encoder (24 layers, d_model 4096,
d_ff 10240, 64 heads, vocabulary 256,384); the Wan2.2 VAE (base_dim 160, decoder_base_dim 256, z_dim 48) or the
Wan2.1 VAE (diffusers' ``AutoencoderKLWan`` defaults). The tokenizer is wanflow's word-level one: prompt length,
not vocabulary, sets the cost (prompts are padded to 512 tokens either way).
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from wanflow import text, tiny
from wanflow.presets import Preset

TRANSFORMER = {
    "ti2v-5b": dict(num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48, ffn_dim=14336,
                    num_layers=30),
    "t2v-a14b": dict(num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16, ffn_dim=13824,
                     num_layers=40),
}
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
                is_gated_act=True, tie_word_embeddings=False)
TEXT_TOKENS = 512


def _vae(structure: str) -> AutoencoderKLWan:
    if structure == "ti2v-5b":
        return AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, in_channels=12, out_channels=12,
                                is_residual=True, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                                latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    return AutoencoderKLWan(latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def build(preset: Preset, device: str = "cuda") -> WanPipeline:
    """``preset``'s structure at full size, random bf16 weights, built directly on ``device``.
    ``BENCH_SMOKE=1`` keeps 2 transformer layers and 1 text-encoder layer (a quick check of the bench's code)."""
    structure = "ti2v-5b" if preset.structure == "ti2v-5b" else "t2v-a14b"
    transformer_config, text_config = dict(TRANSFORMER[structure]), dict(UMT5_XXL)
    if os.environ.get("BENCH_SMOKE"):
        transformer_config["num_layers"], text_config["num_layers"] = 2, 1
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = WanTransformer3DModel(**transformer_config)
            transformer_2 = WanTransformer3DModel(**transformer_config) if preset.two_experts else None
            encoder = UMT5EncoderModel(UMT5Config(**text_config))
            vae = _vae(structure)
    finally:
        torch.set_default_dtype(previous)
    for module in (transformer, transformer_2, encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    return WanPipeline(tokenizer=text.build_tokenizer(), text_encoder=encoder, vae=vae,
                       scheduler=tiny.build_scheduler(preset.structure), transformer=transformer,
                       transformer_2=transformer_2, boundary_ratio=preset.boundary_ratio,
                       expand_timesteps=preset.expand_timesteps)


def forward_flops(structure: str, tokens: int, text_tokens: int = TEXT_TOKENS) -> dict[str, float]:
    """FLOPs of one transformer forward (multiply-add = 2 FLOPs), per block summed over blocks: self-attention
    projections 4 x 2Nd^2, attention 2 x 2N^2 d, cross-attention q/o 2 x 2Nd^2, k/v 2 x 2Ld^2, attention
    2 x 2NLd, feed-forward 2 x 2Nd*ffn (N tokens, L text tokens, d width). TI2V-5B 720p: 517 TFLOP, 53% attention
    (matches ``FACTS.md`` §2). Returns ``total`` and ``attention`` (self-attention kernel alone)."""
    config = TRANSFORMER["ti2v-5b" if structure == "ti2v-5b" else "t2v-a14b"]
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n, lt = tokens, text_tokens
    attention = 4 * n * n * d
    per_block = 8 * n * d * d + attention + 4 * n * d * d + 4 * lt * d * d + 4 * n * lt * d + 4 * n * d * config["ffn_dim"]
    layers = config["num_layers"]
    return {"total": per_block * layers, "attention": attention * layers}
