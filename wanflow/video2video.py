"""Video-to-video on Wan2.2's experts: diffusers' ``WanVideoToVideoPipeline`` driven through an expert router.

``WanVideoToVideoPipeline`` (diffusers 0.42) knows one ``transformer`` and one ``guidance_scale``. The A14B models
have two experts: ``transformer`` for high noise (timesteps ``t >= boundary_ratio * 1000``, with ``guidance_scale``)
and ``transformer_2`` for low noise (with ``guidance_scale_2``), as ``WanPipeline.__call__`` switches them
(``FACTS.md`` §1). :class:`ExpertRouter` stands in as the pipeline's one ``transformer``: the pipeline is
called with ``guidance_scale=1.0`` (so it runs no classifier-free guidance of its own) and the router, on every
call, picks the expert for the call's timestep and runs CFG itself (cond, then uncond with the negative prompt
embeddings, ``uncond + scale * (cond - uncond)``, as ``WanPipeline`` does).

So a low strength, whose first timestep lies below the boundary, runs only ``transformer_2``; a high strength runs
``transformer`` first and hands over at the boundary, as text-to-video does. The experts stay the loaded pipeline's
own modules (shared, not copied), so forward hooks on them see every call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import WanPipeline, WanVideoToVideoPipeline
from PIL import Image

#: Names of the two experts, as diffusers' Wan pipelines name their components.
EXPERTS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class Guidance:
    """What the router needs for one pipeline call: the negative prompt embeddings (None: no CFG) and the two
    scales. CFG runs when ``guidance_scale > 1`` (as in ``WanPipeline``: ``guidance_scale_2`` alone never turns
    it on)."""

    negative_prompt_embeds: torch.Tensor | None
    guidance_scale: float
    guidance_scale_2: float


class ExpertRouter(torch.nn.Module):
    """One ``transformer`` for a pipeline that knows one, routing each call to Wan2.2's high- or low-noise expert
    and running classifier-free guidance.

    Args:
        transformer: the high-noise expert (or the one dense transformer).
        transformer_2: the low-noise expert; None for one dense transformer (then every call goes to ``transformer``).
        boundary_timestep: ``boundary_ratio * num_train_timesteps`` (875 for T2V-A14B); None with one transformer.

    Call :meth:`guide` around a pipeline call to give the negative embeddings and scales; outside it the router
    runs the cond pass only. Returns ``(noise_pred,)`` shaped like the latents, as the experts do with
    ``return_dict=False``.
    """

    def __init__(self, transformer: torch.nn.Module, transformer_2: torch.nn.Module | None,
                 boundary_timestep: float | None):
        super().__init__()
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_timestep = boundary_timestep
        self._guidance: Guidance | None = None

    # The pipeline reads these from its transformer.
    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @contextlib.contextmanager
    def guide(self, guidance: Guidance):
        """Use ``guidance`` for the calls inside the block."""
        self._guidance = guidance
        try:
            yield self
        finally:
            self._guidance = None

    def expert_for(self, timestep: float) -> str:
        """``transformer`` for ``timestep >= boundary_timestep`` (or with one transformer), else ``transformer_2``."""
        if self.transformer_2 is None or self.boundary_timestep is None or timestep >= self.boundary_timestep:
            return "transformer"
        return "transformer_2"

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                attention_kwargs: dict | None = None, return_dict: bool = False, **kwargs):
        name = self.expert_for(float(timestep.flatten()[0]))
        expert = getattr(self, name)
        guidance = self._guidance
        call = dict(hidden_states=hidden_states, timestep=timestep, attention_kwargs=attention_kwargs,
                    return_dict=False, **kwargs)
        with expert.cache_context("cond"):
            noise_pred = expert(encoder_hidden_states=encoder_hidden_states, **call)[0]
        if guidance is not None and guidance.negative_prompt_embeds is not None and guidance.guidance_scale > 1.0:
            scale = guidance.guidance_scale if name == "transformer" else guidance.guidance_scale_2
            with expert.cache_context("uncond"):
                noise_uncond = expert(encoder_hidden_states=guidance.negative_prompt_embeds, **call)[0]
            noise_pred = noise_uncond + scale * (noise_pred - noise_uncond)
        return (noise_pred,)


def experts_of(pipe) -> dict[str, torch.nn.Module]:
    """The expert modules a pipeline runs, by name (``transformer``, ``transformer_2``), looking through an
    :class:`ExpertRouter`: the modules to hook to see which expert ran."""
    holder = pipe.transformer if isinstance(getattr(pipe, "transformer", None), ExpertRouter) else pipe
    return {name: module for name in EXPERTS if (module := getattr(holder, name, None)) is not None}


def build_pipeline(base: WanPipeline) -> WanVideoToVideoPipeline:
    """A ``WanVideoToVideoPipeline`` sharing ``base``'s modules (no copy, no dtype cast), its ``transformer`` an
    :class:`ExpertRouter` over ``base.transformer`` / ``base.transformer_2`` at ``base``'s boundary.

    Built with the constructor, not ``from_pipe``: ``from_pipe`` ends with ``.to(dtype)`` (float32 unless given),
    which would cast the shared experts in place.

    Raises:
        ValueError: ``base`` is not a text-to-video ``WanPipeline`` with the Wan2.1 VAE (8x spatial). Diffusers'
            video-to-video computes the latent size as ``2 ** len(vae.temperal_downsample)`` = 8x, which does not
            fit the Wan2.2 VAE of TI2V-5B (16x), and the I2V experts take 36 input channels.
    """
    if type(base) is not WanPipeline or base.config.get("expand_timesteps"):
        raise ValueError(
            f"preset: video-to-video needs a text-to-video A14B-structure model (WanPipeline without "
            f"expand_timesteps); got {type(base).__name__}"
        )
    boundary_ratio = base.config.get("boundary_ratio")
    boundary = boundary_ratio * base.scheduler.config.num_train_timesteps if boundary_ratio else None
    router = ExpertRouter(base.transformer, base.transformer_2, boundary)
    pipe = WanVideoToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, transformer=router,
                                   vae=base.vae, scheduler=base.scheduler)
    pipe._exclude_from_cpu_offload = list(getattr(base, "_exclude_from_cpu_offload", []))
    return pipe


def input_frames(path: str | Path, num_frames: int, width: int, height: int) -> list[Image.Image]:
    """The video at ``path`` as ``num_frames`` RGB images of ``width`` x ``height`` pixels: frames picked evenly
    from first to last (nearest index), so the clip keeps its duration when the frame rate differs (a TI2V-5B
    draft's 121 frames at 24 fps become an A14B final's 81 at 16 fps: both 5 s), each resized with Lanczos.

    Raises:
        ValueError: the file holds no frames.
    """
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    if not frames:
        raise ValueError(f"video: {path} has no frames")
    last = len(frames) - 1
    picks = [round(i * last / (num_frames - 1)) if num_frames > 1 else 0 for i in range(num_frames)]
    out = []
    for index in picks:
        image = Image.fromarray(frames[index])
        out.append(image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS))
    return out
