"""Train the micro models (``micro-ti2v``, ``micro-a14b``) on the procedural clips and save them in Diffusers layout.

    python -m wanflow.micro.train --device cuda --out wanflow/micro/weights --seed 0      # every stage, one process
    python -m wanflow.micro.train --stage vae --structure ti2v-5b --out runs/vae         # or stage by stage:
    python -m wanflow.micro.train --stage transformers --vaes runs/vae --out runs/t1      # (each saves what the
    python -m wanflow.micro.train --stage transformers --vaes runs/vae --init runs/t1 ... # next one reads)

The shipped micro-v2 weights were made stage by stage (device calls are capped at 10 minutes); the exact commands
and step counts are in ``wanflow/micro/weights/TRAINING.md``.

Stages, each a function below (the two-step CPU smoke of every stage is ``tests/test_micro_train.py``):

1. **VAE per structure** (:func:`train_vae`): an ``AutoencoderKLWan`` in the Wan2.2 layout for ``micro-ti2v``
   (z_dim 48, patch_size 2, 16x spatial, 4x temporal, residual) and in the Wan2.1 layout for ``micro-a14b``
   (z_dim 16, 8x spatial, 4x temporal), trained as an autoencoder on procedural clips: L1 + MSE reconstruction
   (object pixels weighted more, since the object is a few % of the frame) + a small KL to the unit Gaussian.
   Then :func:`measure_latent_stats` measures the per-channel mean and std of the encoded data (posterior mean)
   and writes them into the VAE config as ``latents_mean`` / ``latents_std``, which is how the real Wan VAEs ship
   them and how diffusers' Wan pipelines normalise latents (``(z - mean) / std``).
2. **Text encoder**: a small ``UMT5EncoderModel`` over the caption vocabulary (:mod:`wanflow.text`), trained
   *jointly* with all three transformers through their flow-matching losses (:func:`train_transformers`). Why
   trained and not a frozen random encoder: the captions differ by one word (``red`` vs ``green``); a random
   two-layer encoder mixes every token into every position, so the transformer would have to untangle a random
   projection from few examples. Trained jointly it learns separable colour / motion features at the cost of one
   small extra forward per step. One encoder serves both models, as UMT5-XXL does for the real variants.
3. **Transformers** (:func:`train_transformers`), flow matching as Wan trains: ``x_t = (1 - s) x0 + s eps``, target
   velocity ``eps - x0``, ``s`` drawn uniformly in ``u`` and mapped through the shift transform
   ``s = shift u / (1 + (shift - 1) u)``, timestep ``1000 s``, 10% of captions dropped to the empty prompt (so
   classifier-free guidance with ``negative_prompt=""`` works). ``micro-a14b``: ``transformer`` sees only
   ``t >= boundary_ratio * 1000`` (875), ``transformer_2`` only below. ``micro-ti2v`` gets per-token timesteps
   (``expand_timesteps``); with probability :attr:`TrainConfig.p_i2v` the first latent frame is the clean latent
   of the first video frame with per-token timestep 0 and is left out of the loss: the layout diffusers'
   ``WanImageToVideoPipeline`` builds for TI2V (``first_frame_mask``; ``temp_ts = (mask[0][0][:, ::2, ::2] * t)
   .flatten()``), so the same weights serve text- and image-to-video.

Data are rendered on the fly (:func:`render_clips`, a vectorised torch port of
:func:`wanflow.micro.data.render_clip`) from ``split="train"`` clips only: the held-out combinations
(:data:`wanflow.micro.data.HELDOUT`) are never seen by any stage. Transformers train on a fixed set of encoded
clips (:attr:`TrainConfig.num_clips`), encoded once with each trained VAE.

Weights are an exponential moving average of the training weights, saved in float16 (the loader casts to the
render dtype). Reproducibility: every random draw comes from ``--seed``; step counts are arguments. A stage may
stop early at its ``--*-seconds`` budget; the log (``TRAINING.json``) records the steps actually run, and passing
those step counts with no time budget reproduces the run (up to GPU nondeterminism).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wanflow import text, tiny
from wanflow.micro import data
from wanflow.micro.vocabulary import COLOURS, SHAPES
from wanflow.parameters import ParameterError, as_integer, as_number

#: Where the shipped weights live (one Diffusers folder per micro preset).
WEIGHTS = Path(__file__).parent / "weights"
#: Version string written to each folder's VERSION file (the loader records it as the model revision).
FORMAT = "micro-v2"


@dataclass(frozen=True)
class TrainConfig:
    """Sizes and hyper-parameters. :data:`FULL` is the shipped run; :data:`SMOKE` the two-step CPU test."""

    width: int = 128
    height: int = 128
    num_frames: int = 17
    # VAEs
    vae_base_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    vae_object_weight: float = 4.0
    #: VAE training windows: this many consecutive frames (1 + 4k) cut from full clips at a random 4-frame offset.
    #: The whole clip by default: the Wan VAE encodes and decodes in causal chunks (1 frame, then 4 at a time), each
    #: chunk reading the cached features of the one before, so a window must hold every chunk a render decodes.
    #: Measured (micro-v1 sweep, 1,500 steps): trained on 5-frame windows, frames 1-5 came back at 29-30 dB PSNR
    #: and frames 9-17 at 11-19 dB ...
    vae_window: int = 17
    #: ... and this many pixels square, cut at a multiple of 16 pixels (the VAE is convolutional in space too).
    vae_crop: int = 64
    stats_clips: int = 2048
    # text encoder
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    # transformers: (heads, head_dim, layers, ffn)
    ti2v_transformer: tuple[int, int, int, int] = (4, 64, 4, 768)
    a14b_transformer: tuple[int, int, int, int] = (3, 64, 4, 576)
    freq_dim: int = 64
    num_clips: int = 16384
    transformer_steps: int = 8000
    batch: int = 256
    lr: float = 5e-4
    warmup: int = 200
    ema: float = 0.999
    train_shift: float = 3.0
    caption_dropout: float = 0.1
    p_i2v: float = 0.25
    boundary_ratio: float = 0.875
    encode_batch: int = 256
    # scheduler flow_shift saved in each folder (the preset passes its own at render time anyway)
    ti2v_flow_shift: float = 5.0
    a14b_flow_shift: float = 5.0


FULL = TrainConfig()
SMOKE = TrainConfig(
    width=32, height=32, num_frames=5, vae_base_dim=4, vae_dim_mult=(1, 1, 1, 1), vae_steps=2, vae_batch=2,
    stats_clips=4, text_dim=16, text_layers=1, text_heads=2, ti2v_transformer=(2, 8, 1, 32),
    a14b_transformer=(2, 8, 1, 32), freq_dim=16, num_clips=8, transformer_steps=2, batch=4, warmup=1,
    encode_batch=4,
)


# --- data ----------------------------------------------------------------------------------------------------


def clip_tensors(clips: list[data.Clip], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The clips' parameters as tensors: ``fg``/``bg`` RGB (B, 3) 0..255, ``shape`` index (B,), ``direction``
    (B, 2) unit motion, ``growing`` (B,) bool, ``start`` (B, 2) and ``size`` (B,) fractions."""
    directions = {m: d for m, d in data._DIRECTIONS.items()}
    as_t = lambda x, dt=torch.float32: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    return {
        "fg": as_t([COLOURS[c.colour] for c in clips]),
        "bg": as_t([COLOURS[c.background] for c in clips]),
        "shape": as_t([SHAPES.index(c.shape) for c in clips], torch.long),
        "direction": as_t([directions[c.motion] for c in clips]),
        "growing": as_t([c.motion == "growing" for c in clips], torch.bool),
        "start": as_t([c.start for c in clips]),
        "size": as_t([c.size for c in clips]),
    }


def render_clips(params: dict[str, torch.Tensor], width: int, height: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised torch version of :func:`wanflow.micro.data.render_clip` (same geometry, anti-aliasing and
    colour quantisation; float32 may move a rare edge pixel by one level).

    Returns:
        ``video`` (B, 3, F, H, W) float in [-1, 1] (the VAE's input range) and ``object_mask`` (B, 1, F, H, W)
        float, 1 where the object covers the pixel at all.
    """
    device = params["fg"].device
    t = torch.linspace(0.0, 1.0, num_frames, device=device) if num_frames > 1 else torch.zeros(1, device=device)
    centres = params["start"][:, None, :] + params["direction"][:, None, :] * data.TRAVEL * t[None, :, None]
    growth = torch.where(params["growing"][:, None], 1.0 + (data.GROWTH - 1.0) * t[None, :], torch.ones_like(t)[None, :])
    radii = params["size"][:, None] * growth  # (B, F)
    short = min(width, height)
    cx = (centres[..., 0] * width)[..., None, None]
    cy = (centres[..., 1] * height)[..., None, None]
    r = (radii * short)[..., None, None]
    dx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5)[None, None, None, :] - cx
    dy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5)[None, None, :, None] - cy
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - r
    half = r / 2
    s = math.sqrt(3.0) / 2
    triangle = torch.maximum(torch.maximum(dy - half, s * dx - 0.5 * dy - half), -s * dx - 0.5 * dy - half)
    shape = params["shape"][:, None, None, None]
    signed = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))  # (B, F, H, W)
    coverage = torch.round(torch.clamp(0.5 - signed, 0.0, 1.0) * 255) / 255
    bg = params["bg"][:, :, None, None, None]
    fg = params["fg"][:, :, None, None, None]
    rgb = torch.round(bg + coverage[:, None] * (fg - bg))  # (B, 3, F, H, W), 0..255
    return rgb / 127.5 - 1.0, (coverage[:, None] > 0).float()


class ClipStream:
    """Training clips drawn one after another from ``numpy.random.default_rng(seed)`` (``split="train"``)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def take(self, n: int) -> list[data.Clip]:
        return [data.sample_clip(self.rng, "train") for _ in range(n)]


# --- stage 1: VAEs -------------------------------------------------------------------------------------------


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


#: Budgeted stages time the steps between these two (the first ones pay CUDA start-up and allocator warm-up) and
#: plan their total from that.
_PLAN_FROM, _PLAN_AT = 10, 60


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Budget:
    """A stage's wall-time budget (``seconds``, None: none): :meth:`plan` times the steps from :data:`_PLAN_FROM` to
    :data:`_PLAN_AT` and then cuts the stage's total so that it ends within ``seconds`` of this object's creation."""

    def __init__(self, seconds: float | None, device: torch.device, name: str, log=print):
        self.seconds, self.device, self.name, self.log = seconds, device, name, log
        self.started = time.perf_counter()
        self.warm = self.started

    def plan(self, step: int, total: int) -> int:
        """The stage's total after ``step`` steps have run (``total`` unchanged except at :data:`_PLAN_AT`)."""
        if self.seconds is None or step not in (_PLAN_FROM, _PLAN_AT):
            return total
        _sync(self.device)
        if step == _PLAN_FROM:
            self.warm = time.perf_counter()
            return total
        per_step = (time.perf_counter() - self.warm) / (_PLAN_AT - _PLAN_FROM)
        fit = _PLAN_FROM + int((self.seconds - (self.warm - self.started)) / per_step)
        total = max(step, min(total, fit))
        self.log(f"[{self.name}] planned {total} steps ({per_step:.3f} s/step)")
        return total


def train_vae(
    structure: str, cfg: TrainConfig, seed: int, device: torch.device, seconds: float | None = None, log=print
) -> tuple[torch.nn.Module, dict]:
    """Stage 1: train one Wan VAE (``structure`` ``ti2v-5b`` or ``t2v-a14b``) as an autoencoder.

    Loss per step: mean over pixels of ``w * (|x - x'| + (x - x')^2)`` with ``w = 1 + vae_object_weight`` on object
    pixels, plus ``vae_kl`` times the mean KL of the posterior to N(0, 1). ``seconds`` caps the stage's wall time
    (the plan is re-made after 20 timed steps). Returns the VAE (float32, train mode off) and a log dict.
    """
    torch.manual_seed(seed)
    vae = tiny.build_vae(structure, base_dim=cfg.vae_base_dim, dim_mult=cfg.vae_dim_mult).to(device)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    stream = ClipStream(seed + 101)
    total = cfg.vae_steps
    started = time.perf_counter()
    budget = _Budget(seconds, device, f"vae {structure}", log)
    losses: list[float] = []
    step = 0
    while step < total:
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, total, min(20, total // 10 + 1))
        clips = stream.take(cfg.vae_batch)
        video, obj = render_clips(clip_tensors(clips, device), cfg.width, cfg.height, cfg.num_frames)
        window = min(cfg.vae_window, cfg.num_frames)
        offset = 4 * int(stream.rng.integers((cfg.num_frames - window) // 4 + 1))
        crop = min(cfg.vae_crop, cfg.width, cfg.height)
        y0 = 16 * int(stream.rng.integers((cfg.height - crop) // 16 + 1))
        x0 = 16 * int(stream.rng.integers((cfg.width - crop) // 16 + 1))
        cut = (slice(None), slice(None), slice(offset, offset + window), slice(y0, y0 + crop), slice(x0, x0 + crop))
        video, obj = video[cut], obj[cut]
        with _autocast(device):
            posterior = vae.encode(video).latent_dist
            z = posterior.mean + posterior.std * torch.randn_like(posterior.mean)
            recon = vae.decode(z).sample
        recon = recon.float()
        weight = 1.0 + cfg.vae_object_weight * obj
        diff = recon - video
        rec = (weight * (diff.abs() + diff * diff)).mean()
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mean * mean + logvar.exp() - 1.0 - logvar).mean()
        loss = rec + cfg.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(rec.detach())  # read back only when logging: no host sync per step
        step += 1
        total = budget.plan(step, total)
        if step % 100 == 0 or step == total:
            log(f"[vae {structure}] step {step}/{total} rec {float(torch.stack(losses[-50:]).mean()):.4f} "
                f"kl {kl.item():.2f} {time.perf_counter() - started:.0f}s")
    vae.eval()
    with torch.no_grad():  # PSNR on fresh clips, posterior mean
        video, _ = render_clips(clip_tensors(ClipStream(seed + 999).take(cfg.vae_batch), device),
                                cfg.width, cfg.height, cfg.num_frames)
        with _autocast(device):
            recon = vae.decode(vae.encode(video).latent_dist.mode()).sample.float()
        mse = float(((recon - video) / 2).pow(2).mean())
    result = {
        "steps": step,
        "seconds": round(time.perf_counter() - started, 1),
        "final_rec_loss": round(float(torch.stack(losses[-50:]).mean()), 5),
        "psnr_db": round(10 * math.log10(1.0 / max(mse, 1e-12)), 2),
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
    log(f"[vae {structure}] done {result}")
    return vae, result


@torch.no_grad()
def encode_clips(vae, clips: list[data.Clip], cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Posterior means (argmax, as the pipelines encode an i2v image) of ``clips``, un-normalised: (N, C, f, h, w)."""
    out = []
    for i in range(0, len(clips), cfg.encode_batch):
        video, _ = render_clips(clip_tensors(clips[i : i + cfg.encode_batch], device), cfg.width, cfg.height, cfg.num_frames)
        with _autocast(device):
            out.append(vae.encode(video).latent_dist.mode().float())
    return torch.cat(out)


@torch.no_grad()
def measure_latent_stats(vae, cfg: TrainConfig, seed: int, device: torch.device) -> dict:
    """Per-channel mean and std of the encoded training clips, written into ``vae.config`` (``latents_mean``,
    ``latents_std``) as the real Wan VAEs carry them. A channel's std is floored at 1e-3 so an unused channel
    cannot blow up the normalised latents."""
    latents = encode_clips(vae, ClipStream(seed + 202).take(cfg.stats_clips), cfg, device)
    dims = (0, 2, 3, 4)
    mean = latents.mean(dim=dims)
    std = latents.std(dim=dims).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean], latents_std=[round(float(v), 6) for v in std])
    return {"mean_abs": float(mean.abs().mean()), "std_min": float(std.min()), "std_max": float(std.max())}


def normalise(latents: torch.Tensor, vae) -> torch.Tensor:
    """``(z - latents_mean) / latents_std`` per channel, as diffusers' Wan pipelines do."""
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(shape)
    std = torch.tensor(vae.config.latents_std, device=latents.device).view(shape)
    return (latents - mean) / std


# --- stage 2 + 3: text encoder and transformers --------------------------------------------------------------


def encode_text(text_encoder, ids: torch.Tensor, mask: torch.Tensor, length: int = text.MAX_SEQUENCE_LENGTH) -> torch.Tensor:
    """What ``WanPipeline.encode_prompt`` gives the transformer: the encoder's states at the real tokens, zeros at
    every padded position up to ``length`` (diffusers trims to the sequence length and pads with zeros)."""
    states = text_encoder(ids, attention_mask=mask).last_hidden_state
    states = states * mask[..., None].to(states.dtype)
    return F.pad(states, (0, 0, 0, length - states.shape[1]))


def sample_sigmas(n: int, shift: float, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    """Noise levels in [low, high]: ``u`` uniform on the pre-images, ``sigma = shift u / (1 + (shift - 1) u)``
    (the flow-shift transform of Wan / SD3)."""
    inverse = lambda s: s / (shift - (shift - 1) * s)  # noqa: E731
    u = torch.rand(n, generator=generator, device=device) * (inverse(high) - inverse(low)) + inverse(low)
    return shift * u / (1 + (shift - 1) * u)


def _ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_lerp_(ema, params, 1.0 - decay)


def train_transformers(
    lat_ti2v: torch.Tensor,
    lat_a14b: torch.Tensor,
    caption_index: torch.Tensor,
    captions: list[str],
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    seconds: float | None = None,
    log=print,
    init: dict[str, torch.nn.Module] | None = None,
    only_a14b: bool = False,
) -> tuple[dict[str, torch.nn.Module], dict]:
    """Stages 2 and 3: train the text encoder and the three transformers jointly (one optimiser, one summed loss).
    ``init`` (from :func:`load_models`) continues from trained weights instead of random ones (a fresh optimiser).
    ``only_a14b`` (needs ``init``) trains micro-a14b's two experts alone: the text encoder and micro-ti2v stay as
    they are (micro-ti2v renders exactly as before) and each caption is encoded once.

    Args:
        lat_ti2v: (N, 48, f, h, w) normalised latents of the clips under the micro-ti2v VAE.
        lat_a14b: (N, 16, f, 2h, 2w) the same clips under the micro-a14b VAE.
        caption_index: (N,) index into ``captions`` of each clip's caption.
        captions: the caption table.

    Returns:
        ``{"text_encoder", "ti2v", "a14b_high", "a14b_low"}`` with EMA weights (float32, eval mode), and a log dict
        with the final losses (mean of the last 100 steps, raw training weights).
    """
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed + 303)
    tokenizer = text.build_tokenizer()
    tok = tokenizer(captions + [""], padding="longest", return_tensors="pt")
    ids_table, mask_table = tok.input_ids.to(device), tok.attention_mask.to(device)
    empty = len(captions)

    if only_a14b and init is None:
        raise ValueError("only_a14b continues trained models: pass init (--init DIR)")
    if init is not None:
        models = dict(init)
    else:
        heads, head_dim, layers, ffn = cfg.ti2v_transformer
        models = {
            "text_encoder": text.build_text_encoder(len(tokenizer), cfg.text_dim, cfg.text_layers, cfg.text_heads),
            "ti2v": tiny.build_transformer("ti2v-5b", cfg.text_dim, heads, head_dim, layers, ffn, freq_dim=cfg.freq_dim),
        }
        heads, head_dim, layers, ffn = cfg.a14b_transformer
        for name in ("a14b_high", "a14b_low"):
            models[name] = tiny.build_transformer("t2v-a14b", cfg.text_dim, heads, head_dim, layers, ffn,
                                                  freq_dim=cfg.freq_dim)
    names = ("a14b_high", "a14b_low") if only_a14b else ("ti2v", "a14b_high", "a14b_low")
    trained = names if only_a14b else ("text_encoder", *names)
    params = []
    for name, m in models.items():
        m.to(device).train(name in trained).requires_grad_(name in trained)
        params += list(m.parameters()) if name in trained else []
    contexts = None
    if only_a14b:  # a frozen encoder: every caption (and the empty one) encoded once, looked up per step
        with torch.no_grad(), _autocast(device):
            contexts = encode_text(models["text_encoder"], ids_table, mask_table)
    ema = [p.detach().clone() for p in params]
    # fused AdamW: one kernel per step instead of a few per tensor (these models are launch-bound on a GPU)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99), fused=device.type == "cuda")

    n = lat_ti2v.shape[0]
    f, h, w = lat_ti2v.shape[2:]
    tokens_per_frame = (h // 2) * (w // 2)
    boundary = cfg.boundary_ratio
    total = cfg.transformer_steps
    started = time.perf_counter()
    budget = _Budget(seconds, device, "transformers", log)
    history: list[torch.Tensor] = []  # per step, the losses of ``names``, left on the device: no host sync in the loop
    step = 0

    def recent(k: int = 100) -> dict[str, float]:
        means = torch.stack(history[-k:]).float().mean(0).tolist()
        return {name: round(v, 5) for name, v in zip(names, means)}

    def flow(x0, sigma):
        eps = torch.randn(x0.shape, generator=gen, device=device)
        s = sigma.view(-1, 1, 1, 1, 1)
        return (1 - s) * x0 + s * eps, eps - x0

    while step < total:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, total, cfg.warmup)
        idx = torch.randint(0, n, (cfg.batch,), generator=gen, device=device)
        dropped = torch.rand(cfg.batch, generator=gen, device=device) < cfg.caption_dropout
        cap = torch.where(dropped, empty, caption_index[idx])
        with _autocast(device):
            if contexts is not None:
                context = contexts[cap]
            else:
                context = encode_text(models["text_encoder"], ids_table[cap], mask_table[cap])
            losses = {}
            if "ti2v" in names:
                # micro-ti2v: per-token timesteps; some samples are image-to-video (clean first frame, t = 0 there).
                x0 = lat_ti2v[idx].float()
                sigma = sample_sigmas(cfg.batch, cfg.train_shift, 0.0, 1.0, gen, device)
                xt, target = flow(x0, sigma)
                i2v = torch.rand(cfg.batch, generator=gen, device=device) < cfg.p_i2v
                xt[:, :, 0] = torch.where(i2v.view(-1, 1, 1, 1), x0[:, :, 0], xt[:, :, 0])
                timestep = (1000 * sigma)[:, None].expand(-1, f * tokens_per_frame).clone()
                timestep[:, :tokens_per_frame] = torch.where(i2v[:, None], 0.0, timestep[:, :tokens_per_frame])
                pred = models["ti2v"](xt, timestep, context, return_dict=False)[0].float()
                weight = torch.ones_like(pred[:, :1])
                weight[:, :, 0] = (~i2v).float().view(-1, 1, 1, 1)
                losses["ti2v"] = ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1])

            # micro-a14b: the high-noise expert above the boundary, the low-noise expert below.
            x0 = lat_a14b[idx].float()
            for name, low, high in (("a14b_high", boundary, 1.0), ("a14b_low", 0.0, boundary)):
                sigma = sample_sigmas(cfg.batch, cfg.train_shift, low, high, gen, device)
                xt, target = flow(x0, sigma)
                pred = models[name](xt, 1000 * sigma, context, return_dict=False)[0].float()
                losses[name] = ((pred - target) ** 2).mean()
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            _ema_update(ema, params, min(cfg.ema, (1 + step) / (10 + step)))
        history.append(torch.stack([losses[name] for name in names]).detach())
        step += 1
        total = budget.plan(step, total)
        if step % 250 == 0 or step == total:
            log(f"[transformers] step {step}/{total} " + " ".join(
                f"{k} {v:.4f}" for k, v in recent().items()) + f" {time.perf_counter() - started:.0f}s")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    for m in models.values():
        m.eval()
    result = {
        "steps": step,
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": recent(),
        "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
    }
    log(f"[transformers] done {result}")
    return models, result


# --- assembling and saving -----------------------------------------------------------------------------------


def assemble(models: dict, vaes: dict, cfg: TrainConfig) -> dict:
    """The two pipelines, as the Diffusers conversions of the real variants declare them: ``micro-ti2v`` a
    ``WanPipeline`` with one transformer and ``expand_timesteps=True``; ``micro-a14b`` a ``WanPipeline`` with
    ``transformer`` (high noise), ``transformer_2`` (low noise) and ``boundary_ratio``."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    def scheduler(shift):
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=shift)

    tokenizer = text.build_tokenizer()
    return {
        "micro-ti2v": WanPipeline(
            tokenizer=tokenizer, text_encoder=models["text_encoder"], vae=vaes["ti2v-5b"],
            scheduler=scheduler(cfg.ti2v_flow_shift), transformer=models["ti2v"], transformer_2=None,
            boundary_ratio=None, expand_timesteps=True,
        ),
        "micro-a14b": WanPipeline(
            tokenizer=tokenizer, text_encoder=models["text_encoder"], vae=vaes["t2v-a14b"],
            scheduler=scheduler(cfg.a14b_flow_shift), transformer=models["a14b_high"],
            transformer_2=models["a14b_low"], boundary_ratio=cfg.boundary_ratio, expand_timesteps=False,
        ),
    }


def save(pipes: dict, out: Path, seed: int, log_record: dict, dtype: torch.dtype = torch.float16) -> dict[str, int]:
    """Save each pipeline to ``out/<preset>`` (safetensors, ``dtype``), with ``VERSION`` and ``TRAINING.json``.
    Returns the bytes written per folder."""
    import copy

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    sizes = {}
    stamp = time.strftime("%Y-%m-%d")
    for name, pipe in pipes.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        saved = copy.deepcopy(pipe).to("cpu", dtype)
        saved.save_pretrained(folder, safe_serialization=True)
        (folder / "VERSION").write_text(f"{FORMAT} seed={seed} {stamp}\n")
        (folder / "TRAINING.json").write_text(json.dumps(log_record, indent=2, default=str) + "\n")
        sizes[name] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return sizes


#: The two VAE structures, in training order.
STRUCTURES: tuple[str, ...] = ("ti2v-5b", "t2v-a14b")


def _record(cfg: TrainConfig, seed: int, device: torch.device) -> dict:
    return {"command": " ".join(["python -m wanflow.micro.train", *sys.argv[1:]]), "seed": seed,
            "config": asdict(cfg), "device": str(device), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()}


def train_vaes(
    cfg: TrainConfig, seed: int, device: torch.device, structures=STRUCTURES, seconds: float | None = None,
    vae_steps: dict[str, int] | None = None, out: Path | None = None, log=print,
) -> tuple[dict, dict]:
    """Stage 1 for each of ``structures``: :func:`train_vae` then :func:`measure_latent_stats`.

    With ``out``, each VAE is also saved (float32, Diffusers layout) to ``out/vae-<structure>/`` with its log as
    ``result.json``, which :func:`load_vaes` reads back: the VAE stage can run on its own (``--stage vae``, one
    process per structure) and the transformer stage later (``--stage transformers --vaes DIR``).
    Returns ``({structure: vae}, {"vae_<structure>": log})``."""
    vaes, record = {}, {}
    for structure in structures:
        vae_cfg = replace(cfg, vae_steps=vae_steps[structure]) if vae_steps else cfg
        vae, result = train_vae(structure, vae_cfg, seed, device, seconds, log)
        result["latent_stats"] = measure_latent_stats(vae, cfg, seed, device)
        record[f"vae_{structure}"] = result
        vaes[structure] = vae
        if out is not None:
            folder = out / f"vae-{structure}"
            vae.save_pretrained(folder, safe_serialization=True)
            (folder / "result.json").write_text(json.dumps({**_record(vae_cfg, seed, device), **result}, indent=2) + "\n")
    return vaes, record


def load_vaes(folder: Path, device: torch.device) -> tuple[dict, dict]:
    """The VAEs a ``--stage vae`` run saved under ``folder`` (``vae-<structure>/``), with their logs.

    Raises:
        FileNotFoundError: ``folder`` lacks ``vae-<structure>/`` for one of :data:`STRUCTURES`."""
    from diffusers import AutoencoderKLWan

    vaes, record = {}, {}
    for structure in STRUCTURES:
        path = Path(folder) / f"vae-{structure}"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--vaes: {path} has no trained VAE (run --stage vae first)")
        vaes[structure] = AutoencoderKLWan.from_pretrained(path).to(device).eval()
        result = json.loads((path / "result.json").read_text())
        record[f"vae_{structure}"] = {k: result[k] for k in ("steps", "seconds", "final_rec_loss", "psnr_db",
                                                             "parameters", "latent_stats", "config") if k in result}
    return vaes, record


def load_models(folder: Path) -> tuple[dict[str, torch.nn.Module], dict]:
    """The text encoder and transformers of saved micro models (``folder/micro-ti2v``, ``folder/micro-a14b``, as
    :func:`save` writes them), float32, to continue training (``--init``); and micro-a14b's ``TRAINING.json``, the
    latest record (an ``--only-a14b`` run changes only that model).

    Raises:
        FileNotFoundError: ``folder`` lacks one of the two model folders."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    folder = Path(folder)
    for name in ("micro-ti2v", "micro-a14b"):
        if not (folder / name / "model_index.json").is_file():
            raise FileNotFoundError(f"--init: {folder / name} is not a saved micro model")
    load = lambda sub: WanTransformer3DModel.from_pretrained(folder / sub).float()  # noqa: E731
    models = {
        "text_encoder": UMT5EncoderModel.from_pretrained(folder / "micro-ti2v" / "text_encoder").float(),
        "ti2v": load("micro-ti2v/transformer"),
        "a14b_high": load("micro-a14b/transformer"),
        "a14b_low": load("micro-a14b/transformer_2"),
    }
    return models, json.loads((folder / "micro-a14b" / "TRAINING.json").read_text())


def run(
    cfg: TrainConfig, out: Path, seed: int, device: torch.device, budgets: dict | None = None, log=print,
    vae_steps: dict[str, int] | None = None, vaes_from: Path | None = None, init_from: Path | None = None,
    only_a14b: bool = False,
) -> dict:
    """All stages, end to end; returns the training record (also written into each folder's ``TRAINING.json``).
    ``vae_steps`` overrides ``cfg.vae_steps`` per structure; ``budgets`` caps ``vae`` (each) and ``transformers``
    wall seconds; ``vaes_from`` skips stage 1 and uses the VAEs a ``--stage vae`` run saved there; ``init_from``
    continues from saved models, and ``only_a14b`` then trains micro-a14b's experts alone
    (:func:`train_transformers`)."""
    budgets = budgets or {}
    started = time.perf_counter()
    record = _record(cfg, seed, device)
    if vaes_from is not None:
        vaes, vae_record = load_vaes(vaes_from, device)
    else:
        vaes, vae_record = train_vaes(cfg, seed, device, STRUCTURES, budgets.get("vae"), vae_steps, log=log)
    record.update(vae_record)

    t0 = time.perf_counter()
    clips = ClipStream(seed + 404).take(cfg.num_clips)
    captions = sorted({c.caption for c in clips})
    caption_index = torch.tensor([captions.index(c.caption) for c in clips], device=device)
    lat_ti2v = normalise(encode_clips(vaes["ti2v-5b"], clips, cfg, device), vaes["ti2v-5b"]).to(torch.bfloat16)
    lat_a14b = normalise(encode_clips(vaes["t2v-a14b"], clips, cfg, device), vaes["t2v-a14b"]).to(torch.bfloat16)
    record["encode_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"[encode] {cfg.num_clips} clips, {len(captions)} captions, {record['encode_seconds']}s, "
        f"ti2v {tuple(lat_ti2v.shape)} a14b {tuple(lat_a14b.shape)}")

    init = None
    if init_from is not None:
        init, record["continues"] = load_models(init_from)
    models, result = train_transformers(lat_ti2v, lat_a14b, caption_index, captions, cfg, seed, device,
                                        budgets.get("transformers"), log, init=init, only_a14b=only_a14b)
    record["transformers"] = result
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    if vaes_from is None:
        stages = (f"--vae-steps {record['vae_ti2v-5b']['steps']},{record['vae_t2v-a14b']['steps']} "
                  f"--vae-lr {cfg.vae_lr:g} --vae-batch {cfg.vae_batch}")
    else:  # the VAE stage ran separately: its own command is in vae_<structure>.config / result.json
        stages = (f"--stage transformers --vaes {vaes_from}" + (f" --init {init_from}" if init_from else "")
                  + (" --only-a14b" if only_a14b else ""))
    record["reproduce"] = (f"python -m wanflow.micro.train --seed {seed} {stages} --lr {cfg.lr:g} "
                           f"--num-clips {cfg.num_clips} --transformer-steps {result['steps']} --out {out}")
    sizes = save(assemble(models, vaes, cfg), out, seed, record)
    record["bytes"] = sizes
    log(f"[save] {out}: {sizes}; wall {record['wall_seconds']}s")
    return record


def positive(convert):
    """An argparse ``type``: ``convert`` (:func:`wanflow.parameters.as_integer` or ``as_number``, the kit's own
    conversion rules) and a value > 0."""
    def parse(text: str):
        try:
            value = convert(text, "use a number > 0")
        except ParameterError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if not value > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value
    return parse


def seed_argument(text: str) -> int:
    """An argparse ``type`` for a seed: an integer in 0..:data:`wanflow.spec.MAX_SEED`, as the kit's renders take."""
    from wanflow.spec import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed: {text!r} is not an integer; use 0..{MAX_SEED}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed: {text} is out of range; use 0..{MAX_SEED}")
    return value


def _steps_pair(text: str) -> list[int]:
    """``N`` or ``N,M``: VAE steps for both structures, or for ti2v-5b and t2v-a14b."""
    parts = [positive(as_integer)(v) for v in text.split(",")]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: give one number or two, 'ti2v,a14b'")
    return parts if len(parts) == 2 else parts * 2


def device_argument(text: str) -> torch.device:
    """An argparse ``type``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda: this machine has no CUDA GPU; use --device cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wanflow.micro.train",
        description="Train the micro models (VAEs, text encoder, transformers) on procedural clips and save them "
                    "as Diffusers folders micro-ti2v/ and micro-a14b/.",
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="folder that receives micro-ti2v/ and micro-a14b/ (required: to replace the shipped "
                             f"weights, name their folder, {WEIGHTS.relative_to(WEIGHTS.parents[2])})")
    parser.add_argument("--seed", type=seed_argument, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--device", type=device_argument, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when there is one)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and two steps per stage (CPU, seconds)")
    parser.add_argument("--vae-steps", type=_steps_pair, help="VAE steps: one number, or 'ti2v,a14b'")
    parser.add_argument("--transformer-steps", type=positive(as_integer), help="joint text-encoder + transformer steps")
    parser.add_argument("--num-clips", type=positive(as_integer), help="encoded clips the transformers train on")
    parser.add_argument("--vae-seconds", type=positive(as_number),
                        help="stop each VAE stage by this wall time (budgeted runs)")
    parser.add_argument("--transformer-seconds", type=positive(as_number),
                        help="stop the transformer stage by this wall time")
    parser.add_argument("--stage", choices=("all", "vae", "transformers"), default="all",
                        help="all (default); vae: train the VAEs only and save them to --out/vae-<structure>/; "
                             "transformers: stages 2-3 on the VAEs in --vaes")
    parser.add_argument("--structure", choices=STRUCTURES, action="append",
                        help="with --stage vae: train only this VAE (repeatable; default both)")
    parser.add_argument("--vaes", type=Path, help="with --stage transformers: folder a --stage vae run wrote")
    parser.add_argument("--init", type=Path,
                        help="with --stage transformers: continue from the models saved in this folder "
                             "(micro-ti2v/, micro-a14b/), with a fresh optimiser")
    parser.add_argument("--only-a14b", action="store_true",
                        help="with --init: train micro-a14b's two experts alone; the text encoder and micro-ti2v "
                             "are kept as they are")
    parser.add_argument("--lr", type=positive(as_number), help=f"transformer peak learning rate (default {FULL.lr:g})")
    parser.add_argument("--vae-lr", type=positive(as_number), help=f"VAE learning rate (default {FULL.vae_lr:g})")
    parser.add_argument("--vae-batch", type=positive(as_integer), help=f"VAE clips per step (default {FULL.vae_batch})")
    args = parser.parse_args(argv)
    if args.stage == "transformers" and args.vaes is None:
        parser.error("--stage transformers needs --vaes DIR (the --out of a --stage vae run)")
    if args.stage != "transformers" and args.vaes is not None:
        parser.error("--vaes is only read by --stage transformers")
    if args.init is not None and args.stage != "transformers":
        parser.error("--init is only read by --stage transformers")
    if args.only_a14b and args.init is None:
        parser.error("--only-a14b continues trained models: give --init DIR")
    if args.structure and args.stage != "vae":
        parser.error("--structure is only read by --stage vae (the other stages need both VAEs)")
    needed = {"--vaes": ("vae-ti2v-5b/config.json", "vae-t2v-a14b/config.json"),
              "--init": ("micro-ti2v/model_index.json", "micro-a14b/model_index.json")}
    for flag, folder in (("--vaes", args.vaes), ("--init", args.init)):
        missing = [f for f in needed[flag] if folder is not None and not (folder / f).is_file()]
        if missing:
            parser.error(f"{flag}: {folder} has no {missing[0]} (the --out of an earlier "
                         f"{'--stage vae' if flag == '--vaes' else 'training'} run)")

    cfg = SMOKE if args.smoke else FULL
    if args.lr:
        cfg = replace(cfg, lr=args.lr)
    if args.vae_lr:
        cfg = replace(cfg, vae_lr=args.vae_lr)
    if args.vae_batch:
        cfg = replace(cfg, vae_batch=args.vae_batch)
    if args.transformer_steps:
        cfg = replace(cfg, transformer_steps=args.transformer_steps)
    if args.num_clips:
        cfg = replace(cfg, num_clips=args.num_clips)
    vae_steps = args.vae_steps
    device = args.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = False  # many chunk shapes: autotuning each costs more than it saves
    budgets = {"vae": args.vae_seconds, "transformers": args.transformer_seconds}

    def log(msg):
        print(msg, flush=True)

    steps = None if vae_steps is None else {"ti2v-5b": vae_steps[0], "t2v-a14b": vae_steps[1]}
    if args.stage == "vae":
        train_vaes(cfg, args.seed, device, tuple(args.structure or STRUCTURES), args.vae_seconds, steps,
                   out=args.out, log=log)
        return 0
    run(cfg, args.out, args.seed, device, budgets, log, vae_steps=steps, vaes_from=args.vaes, init_from=args.init,
        only_a14b=args.only_a14b)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
