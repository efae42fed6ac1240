"""Model presets: each Wan2.2 variant with its official settings, and the project's tiny and micro analogues.

A preset names a model (where its weights come from and which structure it has) and the settings the model's
authors render it with. The numbers for the real variants come from Wan-Video/Wan2.2 ``wan/configs/*.py`` and
``generate.py`` (see ``FACTS.md`` §1): diffusers' own ``__call__`` defaults fit none of them, so wanflow
always passes every setting explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Structure = Literal["ti2v-5b", "t2v-a14b", "i2v-a14b"]
Task = Literal["t2v", "i2v"]

#: Wan2.2's default negative prompt (``sample_neg_prompt`` in ``wan/configs/shared_config.py``), used by the real presets.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class Preset:
    """A model variant and its official settings.

    Attributes:
        name: the preset's name on the command line (``--model``).
        kind: ``real`` (Wan2.2 checkpoint), ``tiny`` (random weights, built on the fly) or ``micro`` (trained by
            this project, shipped in the repository).
        structure: which real variant's architecture the weights follow.
        tasks: ``t2v`` (text-to-video) and/or ``i2v`` (image-to-video, needs ``image``).
        hub_id: the Diffusers-format repository on the Hugging Face Hub (real presets).
        boundary_ratio: two-expert presets: timesteps ``t >= boundary_ratio * 1000`` run ``transformer`` (high
            noise), the rest ``transformer_2`` (low noise). None for one dense transformer.
        num_inference_steps, flow_shift, guidance_scale, guidance_scale_2, num_frames, fps: official defaults.
        sizes: official (width, height) pairs in pixels; the first is the default.
        size_multiple: height and width must be multiples of this (VAE spatial factor x patch size: 16 x 2 = 32
            for the Wan2.2 VAE, 8 x 2 = 16 for the Wan2.1 VAE).
        rope_max_seq_len: positions per axis (latent frames, patch rows, patch columns) that the transformer's
            rotary position embedding has (``WanTransformer3DModel.rope_max_seq_len``: 1024 in the Wan2.2
            checkpoints, 32 in the tiny and micro models); a larger video cannot be placed.
        negative_prompt: the default negative prompt.
    """

    name: str
    kind: Literal["real", "tiny", "micro"]
    structure: Structure
    tasks: tuple[Task, ...]
    description: str
    num_inference_steps: int
    flow_shift: float
    guidance_scale: float
    guidance_scale_2: float | None
    num_frames: int
    fps: int
    sizes: tuple[tuple[int, int], ...]
    size_multiple: int
    boundary_ratio: float | None = None
    rope_max_seq_len: int = 1024
    hub_id: str | None = None
    negative_prompt: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def two_experts(self) -> bool:
        """True for the A14B structure: ``transformer`` (high noise) and ``transformer_2`` (low noise)."""
        return self.boundary_ratio is not None

    @property
    def max_side(self) -> int:
        """The largest width or height in pixels the transformer can place: ``rope_max_seq_len`` patches."""
        return self.rope_max_seq_len * self.size_multiple

    @property
    def max_frames(self) -> int:
        """The most frames the transformer can place: ``rope_max_seq_len`` latent frames of 4 (plus the first)."""
        return (self.rope_max_seq_len - 1) * 4 + 1

    @property
    def width(self) -> int:
        return self.sizes[0][0]

    @property
    def height(self) -> int:
        return self.sizes[0][1]

    def tokens(self, width: int | None = None, height: int | None = None, num_frames: int | None = None) -> int:
        """Sequence length of one transformer forward at this size (default: the preset's own): latent frames
        ``(F - 1) // 4 + 1`` times latent pixels over the 2x2 patch, i.e. ``(H / size_multiple) * (W /
        size_multiple)``. TI2V-5B 1280x704x121: 27,280; A14B 1280x720x81: 75,600 (``FACTS.md`` §2)."""
        width, height = width or self.width, height or self.height
        frames = num_frames or self.num_frames
        return ((frames - 1) // 4 + 1) * (height // self.size_multiple) * (width // self.size_multiple)

    @property
    def expand_timesteps(self) -> bool:
        """TI2V-5B's per-token timesteps (``expand_timesteps=True`` in diffusers), which its image-to-video needs."""
        return self.structure == "ti2v-5b"

    def summary(self) -> dict:
        """The preset as one flat row for tables (``wanflow models``)."""
        guidance = f"{self.guidance_scale:g}" + (
            f" / {self.guidance_scale_2:g}" if self.guidance_scale_2 is not None else ""
        )
        return {
            "name": self.name,
            "kind": self.kind,
            "tasks": ",".join(self.tasks),
            "experts": 2 if self.two_experts else 1,
            "boundary_ratio": self.boundary_ratio,
            "steps": self.num_inference_steps,
            "flow_shift": self.flow_shift,
            "guidance": guidance,
            "frames": self.num_frames,
            "fps": self.fps,
            "sizes": " ".join(f"{w}x{h}" for w, h in self.sizes),
            "source": self.hub_id or self.kind,
        }


#: ``rope_max_seq_len`` of the project's tiny and micro transformers (``wanflow.tiny.build_transformer``; the shipped
#: micro configs have it too): 32 positions per axis, against 1024 in the Wan2.2 checkpoints.
SMALL_ROPE_MAX_SEQ_LEN = 32
_TI2V = dict(structure="ti2v-5b", tasks=("t2v", "i2v"), size_multiple=32, boundary_ratio=None)
_T2V_A14B = dict(structure="t2v-a14b", tasks=("t2v",), size_multiple=16, boundary_ratio=0.875)
_I2V_A14B = dict(structure="i2v-a14b", tasks=("i2v",), size_multiple=16, boundary_ratio=0.900)
_A14B_SIZES = ((1280, 720), (720, 1280), (832, 480), (480, 832))

_PRESETS: list[Preset] = [
    Preset(
        name="ti2v-5b", kind="real", **_TI2V, hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        description="Wan2.2 TI2V-5B: dense 5B, text- and image-to-video, 720p at 24 fps, fits a 24 GB card",
        num_inference_steps=50, flow_shift=5.0, guidance_scale=5.0, guidance_scale_2=None,
        num_frames=121, fps=24, sizes=((1280, 704), (704, 1280)), negative_prompt=WAN_NEGATIVE_PROMPT,
    ),
    Preset(
        name="t2v-a14b", kind="real", **_T2V_A14B, hub_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        description="Wan2.2 T2V-A14B: two 14B experts (high/low noise), text-to-video, 80 GB class GPU",
        num_inference_steps=40, flow_shift=12.0, guidance_scale=4.0, guidance_scale_2=3.0,
        num_frames=81, fps=16, sizes=_A14B_SIZES, negative_prompt=WAN_NEGATIVE_PROMPT,
    ),
    Preset(
        name="i2v-a14b", kind="real", **_I2V_A14B, hub_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        description="Wan2.2 I2V-A14B: two 14B experts, image-to-video, 80 GB class GPU",
        num_inference_steps=40, flow_shift=5.0, guidance_scale=3.5, guidance_scale_2=3.5,
        num_frames=81, fps=16, sizes=_A14B_SIZES, negative_prompt=WAN_NEGATIVE_PROMPT,
    ),
    # Tiny: random weights in each real structure, built on the fly (wanflow.tiny). Same flow_shift, guidance and
    # boundary as the real variant so that the settings' path to the pipeline is tested; few steps and frames.
    Preset(
        name="tiny-ti2v", kind="tiny", rope_max_seq_len=SMALL_ROPE_MAX_SEQ_LEN, **_TI2V,
        description="random weights in the TI2V-5B structure (48-channel 16x VAE, expand_timesteps); tests only",
        num_inference_steps=4, flow_shift=5.0, guidance_scale=5.0, guidance_scale_2=None,
        num_frames=9, fps=24, sizes=((64, 64),),
    ),
    Preset(
        name="tiny-t2v-a14b", kind="tiny", rope_max_seq_len=SMALL_ROPE_MAX_SEQ_LEN, **_T2V_A14B,
        description="random weights in the T2V-A14B structure (two experts, 16-channel 8x VAE); tests only",
        num_inference_steps=6, flow_shift=12.0, guidance_scale=4.0, guidance_scale_2=3.0,
        num_frames=9, fps=16, sizes=((64, 64),),
    ),
    Preset(
        name="tiny-i2v-a14b", kind="tiny", rope_max_seq_len=SMALL_ROPE_MAX_SEQ_LEN, **_I2V_A14B,
        description="random weights in the I2V-A14B structure (two experts, 36 input channels); tests only",
        num_inference_steps=6, flow_shift=5.0, guidance_scale=3.5, guidance_scale_2=3.5,
        num_frames=9, fps=16, sizes=((64, 64),),
    ),
    # Micro: trained by wanflow on procedural clips (wanflow.micro.train), shipped in wanflow/micro/weights.
    # Settings: the best of a grid of flow_shift x guidance on the held-out prompts, seeds 0-1
    # (python -m wanflow.micro.evaluate --grid; micro-v2 numbers in wanflow/micro/weights/TRAINING.md).
    Preset(
        name="micro-ti2v", kind="micro", rope_max_seq_len=SMALL_ROPE_MAX_SEQ_LEN, **_TI2V,
        description="micro model in the TI2V-5B structure, trained on procedural clips; renders in seconds on a CPU",
        num_inference_steps=20, flow_shift=3.0, guidance_scale=4.0, guidance_scale_2=None,
        num_frames=17, fps=8, sizes=((128, 128),), negative_prompt="",
    ),
    Preset(
        name="micro-a14b", kind="micro", rope_max_seq_len=SMALL_ROPE_MAX_SEQ_LEN, **_T2V_A14B,
        description="micro model in the T2V-A14B structure (two experts), trained on procedural clips",
        num_inference_steps=20, flow_shift=5.0, guidance_scale=3.0, guidance_scale_2=3.0,
        num_frames=17, fps=8, sizes=((128, 128),), negative_prompt="",
    ),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}

#: The embedded default model: what ``wanflow render`` uses when ``--model`` is not given.
DEFAULT_PRESET = "micro-ti2v"


class UnknownPresetError(ValueError):
    """Raised for a preset name that does not exist; the message lists the known ones."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        UnknownPresetError: no such preset; the message lists every known name.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(
            f"preset: unknown model {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
