"""Held-out evaluation of the micro models: does a render show the prompt's background colour, object colour and
motion (read from the frames by :func:`wanflow.quality.detect`)?

    python -m wanflow.micro.evaluate                      # both models, held-out prompts x seeds 0..3, CPU
    python -m wanflow.micro.evaluate --device cuda --json eval.json

For ``micro-a14b`` it also renders the same prompts and seeds with one expert alone running the whole schedule
(``transformer`` only = high-noise expert everywhere, ``transformer_2`` only), which is what "two experts pay"
is measured against. Prompts are :data:`wanflow.micro.data.HELDOUT_PROMPTS`: combinations no training clip has.

``--transfer`` measures what a final keeps of its draft (:func:`transfer`): drafts on ``micro-ti2v``, then
``draft-v2v`` and ``fresh`` finals on ``micro-a14b``, through the same :func:`wanflow.generate.generate` calls a
replay makes.

Renders are batched: one pipeline call renders every prompt of a seed with a list of CPU generators, each seeded
with that seed, so each video gets the same noise as a single :func:`wanflow.generate.generate` render of it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wanflow.micro.data import HELDOUT_PROMPTS, parse_prompt
from wanflow.micro.train import device_argument, positive, seed_argument
from wanflow.parameters import as_integer
from wanflow.presets import Preset, get_preset
from wanflow.quality import detect
from wanflow.text import MAX_SEQUENCE_LENGTH


@dataclass(frozen=True)
class Settings:
    """Render settings; ``None`` takes the preset's."""

    num_inference_steps: int | None = None
    flow_shift: float | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None

    def resolve(self, preset: Preset) -> "Settings":
        return Settings(
            self.num_inference_steps or preset.num_inference_steps,
            self.flow_shift if self.flow_shift is not None else preset.flow_shift,
            self.guidance_scale if self.guidance_scale is not None else preset.guidance_scale,
            self.guidance_scale_2 if self.guidance_scale_2 is not None else preset.guidance_scale_2,
        )


def load(preset: Preset, device: str = "cpu", model_dir: str | None = None):
    """The preset's text-to-video pipeline in float32 on ``device`` (through :func:`wanflow.loading.load_pipeline`)."""
    from wanflow.loading import LoadOptions, load_pipeline

    return load_pipeline(preset, "t2v", LoadOptions(device=device, dtype="float32", model_dir=model_dir)).pipe


def single_expert(pipe, expert: str):
    """The same two-expert pipeline with ``expert`` (``transformer`` or ``transformer_2``) running every step."""
    from diffusers import WanPipeline

    module = getattr(pipe, expert)
    components = {**pipe.components, "transformer": module, "transformer_2": module}
    variant = WanPipeline(**components, boundary_ratio=pipe.config.boundary_ratio,
                          expand_timesteps=pipe.config.expand_timesteps)
    variant.set_progress_bar_config(disable=True)
    return variant


def render_batch(pipe, preset: Preset, settings: Settings, prompts: list[str], seed: int) -> np.ndarray:
    """Render ``prompts`` with one seed each (same noise as a single render with that seed): uint8 (B, F, H, W, 3)."""
    from diffusers import UniPCMultistepScheduler

    s = settings.resolve(preset)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=s.flow_shift)
    call = dict(
        prompt=prompts, negative_prompt=[preset.negative_prompt] * len(prompts), height=preset.height,
        width=preset.width, num_frames=preset.num_frames, num_inference_steps=s.num_inference_steps,
        guidance_scale=s.guidance_scale, generator=[torch.Generator("cpu").manual_seed(seed) for _ in prompts],
        output_type="np", max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    if preset.two_experts:
        call["guidance_scale_2"] = s.guidance_scale_2
    with torch.no_grad():
        frames = pipe(**call).frames
    return np.rint(np.clip(np.asarray(frames), 0, 1) * 255).astype(np.uint8)


def score(frames: np.ndarray, prompt: str) -> dict[str, bool]:
    """Background, object colour and motion of one video against its prompt, and ``all`` three right."""
    want = parse_prompt(prompt)
    found = detect(frames)
    result = {
        "background": found.background == want.background,
        "colour": found.object_colour == want.colour,
        "motion": found.direction == want.motion,
    }
    result["all"] = all(result.values())
    return result


def evaluate(pipe, preset: Preset, settings: Settings = Settings(), prompts: list[str] | None = None,
             seeds: tuple[int, ...] = (0, 1, 2, 3), batch: int = 64) -> dict:
    """Accuracy (0..1) of background, object colour, motion and all three over ``prompts`` x ``seeds``.

    Returns ``{"background", "colour", "motion", "all", "n", "seconds", "settings", "failures"}``; ``failures``
    lists up to 20 ``(prompt, seed, what was detected)``.
    """
    prompts = list(HELDOUT_PROMPTS if prompts is None else prompts)
    started = time.perf_counter()
    rows, failures = [], []
    for seed in seeds:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            for prompt, frames in zip(chunk, render_batch(pipe, preset, settings, chunk, seed)):
                row = score(frames, prompt)
                rows.append(row)
                if not row["all"] and len(failures) < 20:
                    d = detect(frames)
                    failures.append((prompt, seed, f"{d.object_colour} {d.direction} on {d.background}"))
    keys = ("background", "colour", "motion", "all")
    return {
        **{k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys},
        "n": len(rows),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": settings.resolve(preset).__dict__,
        "failures": failures,
    }


def evaluate_all(device: str = "cpu", seeds=(0, 1, 2, 3), weights: str | None = None, batch: int = 64,
                 experts: bool = True, log=print) -> dict:
    """Both micro models at their preset settings, plus micro-a14b's experts alone. ``weights`` is a folder holding
    ``micro-ti2v/`` and ``micro-a14b/`` (default: the shipped ones)."""
    results = {}
    for name in ("micro-ti2v", "micro-a14b"):
        preset = get_preset(name)
        pipe = load(preset, device, f"{weights}/{name}" if weights else None)
        results[name] = evaluate(pipe, preset, seeds=seeds, batch=batch)
        log(name, {k: v for k, v in results[name].items() if k != "failures"})
        if preset.two_experts and experts:
            for expert in ("transformer", "transformer_2"):
                key = f"{name}[{expert} only]"
                results[key] = evaluate(single_expert(pipe, expert), preset, seeds=seeds, batch=batch)
                log(key, {k: v for k, v in results[key].items() if k != "failures"})
    return results


#: Two starting positions closer than this (Euclidean, fractions of the frame) count as the same: half the smallest
#: object radius (``SIZE_RANGE[0]``, 0.12 of the shorter side) at the micro square frames.
START_TOLERANCE = 0.06


def _kept(final, draft) -> dict[str, bool]:
    """Does ``final`` (a :class:`wanflow.quality.Detection`) keep ``draft``'s object colour, motion and start?"""
    same_start = (final.start is not None and draft.start is not None
                  and float(np.hypot(final.start[0] - draft.start[0], final.start[1] - draft.start[1])) < START_TOLERANCE)
    result = {"colour": final.object_colour == draft.object_colour, "motion": final.direction == draft.direction,
              "start": bool(same_start)}
    result["all"] = all(result.values())
    return result


def transfer(device: str = "cpu", seeds=(0, 1, 2, 3), prompts: list[str] | None = None, strength: float | None = None,
             weights: str | None = None, log=print) -> dict:
    """What finals keep of their drafts: for each prompt and seed a ``micro-ti2v`` draft, then on ``micro-a14b`` a
    ``draft-v2v`` final (the draft's mp4 re-noised to ``strength``, default
    :data:`wanflow.transfer.DEFAULT_STRENGTH`, at :data:`wanflow.transfer.DRAFT_V2V_FLOW_SHIFT`, as a replay makes
    it) and a ``fresh`` final (same prompt, its own seed ``seed + 1000``).

    Returns, for ``draft-v2v`` and ``fresh``, the fraction (0..1) of finals whose detected object colour, motion and
    start (within :data:`START_TOLERANCE`) match the draft's, and ``all`` three, over all drafts with an object and
    (``"<mode> (adherent drafts)"``) over the drafts that show their prompt's background, colour and motion, the
    ones a user would lock; plus ``start_chance``: how often
    the start of a draft matches the start of a draft of another prompt-seed pair with the same detected motion
    (what "chance level" means for the start), and ``drafts_with_object``.
    """
    import tempfile

    from wanflow.generate import generate
    from wanflow.loading import LoadOptions
    from wanflow.media import write_video
    from wanflow.spec import RenderSpec
    from wanflow.transfer import DEFAULT_STRENGTH, DRAFT_V2V_FLOW_SHIFT

    prompts = list(HELDOUT_PROMPTS if prompts is None else prompts)
    strength = DEFAULT_STRENGTH if strength is None else strength
    if not 0 < strength <= 1:  # before any render, not at the first final
        raise ValueError(f"strength: {strength} is out of range; allowed 0 < strength <= 1")
    options = {name: LoadOptions(device=device, dtype="float32", model_dir=f"{weights}/{name}" if weights else None)
               for name in ("micro-ti2v", "micro-a14b")}
    started = time.perf_counter()
    rows: dict[str, list[dict]] = {"draft-v2v": [], "fresh": []}
    drafts = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for i, prompt in enumerate(prompts):
                draft = generate(RenderSpec(preset="micro-ti2v", prompt=prompt, seed=seed), options["micro-ti2v"],
                                 progress=False)
                found = detect(draft.frames)
                if found.start is None:  # nothing to keep: counted in drafts_with_object, not in the rates
                    continue
                drafts.append(found)
                path = write_video(draft.frames, Path(tmp) / f"draft-{seed}-{i}.mp4", get_preset("micro-ti2v").fps)
                finals = {
                    "draft-v2v": RenderSpec(preset="micro-a14b", prompt=prompt, seed=seed, video=str(path),
                                            strength=strength, flow_shift=DRAFT_V2V_FLOW_SHIFT),
                    "fresh": RenderSpec(preset="micro-a14b", prompt=prompt, seed=seed + 1000),
                }
                adherent = score(draft.frames, prompt)["all"]  # a draft a user would lock
                for mode, spec in finals.items():
                    final = generate(spec, options["micro-a14b"], progress=False)
                    rows[mode].append(_kept(detect(final.frames), found) | {"adherent": adherent})
            log(f"[transfer] seed {seed}: {len(drafts)} drafts so far, {time.perf_counter() - started:.0f}s")
    pairs = [(a, b) for i, a in enumerate(drafts) for b in drafts[i + 1:] if a.direction == b.direction]
    keys = ("colour", "motion", "start", "all")
    rows |= {f"{mode} (adherent drafts)": [r for r in rs if r["adherent"]] for mode, rs in rows.items()}
    result = {mode: {k: round(float(np.mean([r[k] for r in rs])), 4) if rs else None for k in keys} | {"n": len(rs)}
              for mode, rs in rows.items()}
    result["start_chance"] = round(float(np.mean([_kept(a, b)["start"] for a, b in pairs])), 4) if pairs else None
    result["drafts_with_object"] = f"{len(drafts)}/{len(prompts) * len(seeds)}"
    result["strength"] = strength
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


#: Settings tried by :func:`grid` (steps fixed at the preset's).
GRID = {
    "micro-ti2v": [Settings(flow_shift=f, guidance_scale=g) for f in (1.0, 3.0, 5.0) for g in (1.0, 3.0, 5.0)],
    "micro-a14b": [Settings(flow_shift=f, guidance_scale=g, guidance_scale_2=g2)
                   for f in (3.0, 5.0, 12.0) for g, g2 in ((1.0, 1.0), (3.0, 3.0), (5.0, 4.0))],
}


def grid(device: str = "cpu", seeds=(0, 1), weights: str | None = None, batch: int = 128, log=print) -> dict:
    """Held-out accuracy of each micro model over :data:`GRID` (how the presets' settings were chosen)."""
    results = {}
    for name, candidates in GRID.items():
        preset = get_preset(name)
        pipe = load(preset, device, f"{weights}/{name}" if weights else None)
        for settings in candidates:
            r = evaluate(pipe, preset, settings, seeds=seeds, batch=batch)
            key = f"{name} shift={settings.flow_shift:g} cfg={settings.guidance_scale:g}/{settings.guidance_scale_2}"
            results[key] = {k: v for k, v in r.items() if k != "failures"}
            log(key, results[key])
    return results


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"strength: {text!r} is not a number; allowed 0 < strength <= 1") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"strength: {text} is out of range; allowed 0 < strength <= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wanflow.micro.evaluate",
        description="Held-out evaluation of the micro models: does a render show the prompt's background colour, "
                    "object colour and motion, as read back from its frames?")
    parser.add_argument("--device", type=device_argument, default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--seeds", type=seed_argument, nargs="+", default=[0, 1, 2, 3],
                        help="noise seeds; every held-out prompt renders once per seed (default 0 1 2 3)")
    parser.add_argument("--weights", help="folder with micro-ti2v/ and micro-a14b/ (default: the shipped weights)")
    parser.add_argument("--batch", type=positive(as_integer), default=64, help="videos per pipeline call (default 64)")
    parser.add_argument("--no-experts", action="store_true", help="skip micro-a14b's single-expert runs")
    parser.add_argument("--grid", action="store_true", help="held-out accuracy over a grid of flow_shift x guidance per model instead (how the presets' "
                             "settings were chosen)")
    parser.add_argument("--transfer", action="store_true",
                        help="measure what draft-v2v and fresh finals on micro-a14b keep of micro-ti2v drafts")
    parser.add_argument("--strength", type=_strength, help="draft-v2v strength for --transfer, 0 < s <= 1 "
                                                             "(default: the kit's, 0.15)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.grid and args.transfer:
        parser.error("--grid and --transfer are two different measurements; run one at a time")
    if args.strength is not None and not args.transfer:
        parser.error("--strength is only read by --transfer")
    if args.weights is not None:
        missing = [n for n in ("micro-ti2v", "micro-a14b") if not (Path(args.weights) / n / "model_index.json").is_file()]
        if missing:
            parser.error(f"--weights: {args.weights} has no {missing[0]}/ (the --out of a training run)")
    args.device = str(args.device)
    torch.set_grad_enabled(False)
    if args.transfer:
        results = transfer(args.device, tuple(args.seeds), strength=args.strength, weights=args.weights)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=2)
        print(json.dumps(results, indent=2))
        return 0
    if args.grid:
        results = grid(args.device, tuple(args.seeds), args.weights, args.batch)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=2)
        return 0
    results = evaluate_all(args.device, tuple(args.seeds), args.weights, args.batch, not args.no_experts)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    for name, r in results.items():
        print(f"{name:32s} background {r['background']:.1%}  colour {r['colour']:.1%}  motion {r['motion']:.1%}  "
              f"all three {r['all']:.1%}  (n={r['n']}, {r['seconds']}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
