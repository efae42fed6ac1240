"""Session-6 experiment (2026-11-29), kept as it ran (CPU, ~12 min): what a draft-v2v final on micro-a14b keeps of a
micro-ti2v draft (object colour, motion, start; wanflow.micro.evaluate's reader) at several strengths and flow
shifts, seed 0, the 41 held-out prompts. Strength 0.05 at shift 5 is one step of 20 from 21% noise (labelled "near
round trip" in the log). Output: bench/results/transfer-flow-shift-probe.log. It led to
wanflow.transfer.DRAFT_V2V_FLOW_SHIFT = 1. Usage, from the repository root: python bench/experiments/v2v_flow_shift.py
"""
import sys, tempfile, time, json
from pathlib import Path
import numpy as np
from wanflow.generate import generate
from wanflow.loading import LoadOptions
from wanflow.media import write_video
from wanflow.spec import RenderSpec
from wanflow.presets import get_preset
from wanflow.micro.evaluate import HELDOUT_PROMPTS, detect, score, _kept
opts = {n: LoadOptions(device="cpu", dtype="float32") for n in ("micro-ti2v", "micro-a14b")}
variants = {"s0.05 shift5 (near round trip)": dict(strength=0.05), "s0.3 shift5 (kit)": dict(strength=0.3),
            "s0.3 shift1": dict(strength=0.3, flow_shift=1.0), "s0.3 shift2": dict(strength=0.3, flow_shift=2.0),
            "s0.5 shift1": dict(strength=0.5, flow_shift=1.0)}
rows = {k: [] for k in variants}
t0 = time.time()
with tempfile.TemporaryDirectory() as tmp:
    for i, prompt in enumerate(HELDOUT_PROMPTS):
        d = generate(RenderSpec(preset="micro-ti2v", prompt=prompt, seed=0), opts["micro-ti2v"], progress=False)
        found = detect(d.frames)
        if found.start is None:
            continue
        adherent = score(d.frames, prompt)["all"]
        path = write_video(d.frames, Path(tmp) / f"d{i}.mp4", get_preset("micro-ti2v").fps)
        for k, kw in variants.items():
            f = generate(RenderSpec(preset="micro-a14b", prompt=prompt, seed=0, video=str(path), **kw), opts["micro-a14b"], progress=False)
            rows[k].append(_kept(detect(f.frames), found) | {"adherent": adherent, "final_adherent": score(f.frames, prompt)["all"]})
        print(i, round(time.time() - t0), flush=True)
for k, rs in rows.items():
    print(k, {m: round(float(np.mean([r[m] for r in rs])), 3) for m in ("colour", "motion", "start", "all", "final_adherent")}, "n", len(rs),
          "adherent-only all", round(float(np.mean([r["all"] for r in rs if r["adherent"]])), 3))
