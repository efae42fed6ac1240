"""Session-7 experiment (2026-11-30): what a draft-v2v final on micro-a14b keeps of a micro-ti2v draft at several
strengths, all at wanflow.transfer.DRAFT_V2V_FLOW_SHIFT (so the strength is the starting noise level), plus the
micro-a14b VAE round trip of the draft alone (strength 0: what any final through that VAE starts from). Reader:
wanflow.micro.evaluate's (object colour, motion, start). Output: one JSON line per draft, then a summary per
variant over all drafts and over the adherent ones.

    python bench/experiments/v2v_strength.py --device cuda --seeds 0 1 2 3 --strengths 0.1 0.15 0.2 0.3 > log
"""
import argparse, json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from wanflow.generate import generate  # noqa: E402
from wanflow.loading import LoadOptions, load_pipeline  # noqa: E402
from wanflow.media import write_video  # noqa: E402
from wanflow.micro.evaluate import HELDOUT_PROMPTS, _kept, detect, score  # noqa: E402
from wanflow.presets import get_preset  # noqa: E402
from wanflow.spec import RenderSpec  # noqa: E402
DRAFT_V2V_FLOW_SHIFT = 1.0  # wanflow.transfer.DRAFT_V2V_FLOW_SHIFT (importing wanflow.transfer needs mlflow)
from wanflow.video2video import input_frames  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--strengths", type=float, nargs="+", default=[0.1, 0.2, 0.3])
parser.add_argument("--no-mp4", action="store_true", help="hand the draft's frames over in memory, not as an mp4 "
                    "(for a machine without ffmpeg; skips x264's rounding)")
args = parser.parse_args()
in_memory = {}
if args.no_mp4:
    import wanflow.generate
    from PIL import Image

    def write_video(frames, path, fps):
        Path(path).touch()
        in_memory[str(path)] = frames
        return Path(path)

    def input_frames(path, num_frames, width, height):
        frames = in_memory[str(path)]
        assert frames.shape[:3] == (num_frames, height, width), frames.shape
        return [Image.fromarray(f) for f in frames]

    wanflow.generate.input_frames = input_frames
opts = {n: LoadOptions(device=args.device, dtype="float32") for n in ("micro-ti2v", "micro-a14b")}
vae = load_pipeline(get_preset("micro-a14b"), "t2v", opts["micro-a14b"]).pipe.vae


def round_trip(path, spec):
    read = in_memory.get(str(path))
    frames = read if read is not None else np.stack(
        [np.asarray(i) for i in input_frames(path, spec.num_frames, spec.width, spec.height)])
    x = torch.from_numpy(frames).to(args.device).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return ((y[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


rows = []
started = time.time()
with tempfile.TemporaryDirectory() as tmp:
    for seed in args.seeds:
        for i, prompt in enumerate(HELDOUT_PROMPTS):
            draft = generate(RenderSpec(preset="micro-ti2v", prompt=prompt, seed=seed), opts["micro-ti2v"],
                             progress=False)
            found = detect(draft.frames)
            if found.start is None:
                continue
            path = write_video(draft.frames, Path(tmp) / f"d{seed}-{i}.mp4", get_preset("micro-ti2v").fps)
            row = {"seed": seed, "prompt": prompt, "adherent": score(draft.frames, prompt)["all"],
                   "draft": [found.direction, found.object_colour, found.start]}
            base = RenderSpec(preset="micro-a14b", prompt=prompt, seed=seed, video=str(path), strength=0.3,
                              flow_shift=DRAFT_V2V_FLOW_SHIFT)
            row["round trip"] = _kept(detect(round_trip(path, base)), found)
            for s in args.strengths:
                final = generate(base.model_copy(update={"strength": s}), opts["micro-a14b"], progress=False)
                d = detect(final.frames)
                row[f"s{s}"] = _kept(d, found) | {"final": [d.direction, d.object_colour, d.start]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"seed {seed} done, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
for variant in ["round trip"] + [f"s{s}" for s in args.strengths]:
    for label, rs in (("all", rows), ("adherent", [r for r in rows if r["adherent"]])):
        print(variant, label, len(rs), {k: round(float(np.mean([r[variant][k] for r in rs])), 3)
                                         for k in ("colour", "motion", "start", "all")})
