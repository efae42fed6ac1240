"""Session-6 experiment (2026-11-29), kept as it ran: one compiled forward per timestep layout and its kernel
breakdown (ti2v), the decode and frame conversion, fused QKV; attention backends at 75,600 tokens (a14b).
Output (renamed from $OUT/exp1-<case>.json and its logs): bench/results/exact-path-experiments.log and -a14b.json.
Usage on a GPU, from the repository root: python bench/experiments/exact_variants.py ti2v|a14b
The ti2v run stopped at its channels-last step (Module.to(memory_format=...) refuses non-5D parameters);
bench/experiments/vae_layout.py measured that with wanflow.acceleration.channels_last. bench/breakdown.py is the
maintained form of the kernel breakdown."""
import json, sys, time, os
from collections import defaultdict
import torch
sys.path.insert(0, os.getcwd())
from bench.fullsize import build
from wanflow.acceleration import accelerate
from wanflow.presets import get_preset
from wanflow.media import to_uint8

case = sys.argv[1]
out = {}
dev = torch.device("cuda")

def ev_time(fn, n=3):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        r = fn()
    e.record(); e.synchronize()
    return s.elapsed_time(e) / 1000 / n, r

def kind(name):
    n = name.lower()
    if any(k in n for k in ("fmha", "flash", "sdpa", "attention", "attn")) and "conv" not in n:
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "xmma_gemm", "cutlass", "gemv", "splitk")) and "conv" not in n:
        return "gemm"
    if "conv" in n or "implicit" in n or "winograd" in n or "fprop" in n or "dgrad" in n:
        return "conv"
    if n.startswith("triton"):
        return "triton(fused)"
    if "copy" in n or "memcpy" in n or "memset" in n:
        return "copy"
    return "eager-other"

def profile(fn, label):
    from torch.profiler import profile as P, ProfilerActivity
    torch.cuda.synchronize()
    with P(activities=[ProfilerActivity.CUDA]) as prof:
        fn(); torch.cuda.synchronize()
    totals, names = defaultdict(float), defaultdict(float)
    try:
        for e in prof.key_averages():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                sec = getattr(e, "self_device_time_total", 0) / 1e6
                totals[kind(e.key)] += sec
                names[e.key[:110]] += sec
    except Exception as err:
        print("profile parse failed", err, flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40), flush=True)
    top = sorted(names.items(), key=lambda kv: -kv[1])[:30]
    out[label] = {"by_kind_s": dict(totals), "top": top}
    print(label, json.dumps(dict(totals)), flush=True)
    for n, s in top[:30]:
        print(f"   {s*1000:9.2f} ms  {n}", flush=True)

with torch.no_grad():
    if case == "ti2v":
        t0 = time.time(); pipe = build(get_preset("ti2v-5b")); print("built", time.time() - t0, flush=True)
        tr = pipe.transformer
        tokens = 27280
        tags = accelerate({"transformer": tr}, dev, tokens, True, ())
        print(tags, flush=True)
        g = torch.Generator(dev).manual_seed(0)
        lat = torch.randn(1, 48, 31, 44, 80, device=dev, dtype=torch.bfloat16, generator=g)
        emb = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16, generator=g)
        t_tok = torch.full((1, tokens), 900.0, device=dev)
        t_one = torch.tensor([900.0], device=dev)
        f_tok = lambda: tr(hidden_states=lat, timestep=t_tok, encoder_hidden_states=emb, return_dict=False)[0]
        f_one = lambda: tr(hidden_states=lat, timestep=t_one, encoder_hidden_states=emb, return_dict=False)[0]
        t0 = time.time(); f_tok(); torch.cuda.synchronize(); print("compile tok", time.time() - t0, flush=True)
        t0 = time.time(); f_one(); torch.cuda.synchronize(); print("compile one", time.time() - t0, flush=True)
        for rep in range(2):
            s_tok, o_tok = ev_time(f_tok); s_one, o_one = ev_time(f_one)
            print(f"rep{rep} per-token timestep {s_tok:.4f} s; one timestep {s_one:.4f} s", flush=True)
        out["ti2v_forward_tok_s"], out["ti2v_forward_one_s"] = s_tok, s_one
        out["rel_err_one_vs_tok"] = float((o_one.float() - o_tok.float()).norm() / o_tok.float().norm())
        print("rel err", out["rel_err_one_vs_tok"], flush=True)
        profile(f_tok, "ti2v_forward_tok")
        profile(f_one, "ti2v_forward_one")
        # VAE decode
        vae = pipe.vae
        z = torch.randn(1, 48, 31, 44, 80, device=dev, dtype=vae.dtype, generator=g)
        dec = lambda: vae.decode(z, return_dict=False)[0]
        s_dec, video = ev_time(dec, 2)
        print("decode", s_dec, video.shape, video.dtype, flush=True)
        out["decode_s"] = s_dec
        profile(dec, "ti2v_decode")
        # postprocess: np path + to_uint8 vs on GPU
        def np_path():
            torch.cuda.synchronize(); t = time.perf_counter()
            fr = pipe.video_processor.postprocess_video(video, output_type="np")
            u = to_uint8(fr); return time.perf_counter() - t, u
        def gpu_path():
            torch.cuda.synchronize(); t = time.perf_counter()
            fr = pipe.video_processor.postprocess_video(video, output_type="pt")
            u = (fr[0].float() * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            return time.perf_counter() - t, u
        np_path(); gpu_path()
        (a, ua), (b, ub) = np_path(), gpu_path()
        out["post_np_s"], out["post_gpu_s"] = a, b
        out["post_equal"] = bool((ua == ub).all())
        print(f"postprocess np+to_uint8 {a:.3f} s; gpu {b:.3f} s; equal {out['post_equal']}", flush=True)
        # channels_last_3d VAE
        vae.to(memory_format=torch.channels_last_3d)
        s_cl, video_cl = ev_time(dec, 2)
        out["decode_channels_last_s"] = s_cl
        out["decode_cl_maxdiff"] = float((video_cl.float() - video.float()).abs().max())
        print("decode channels_last_3d", s_cl, out["decode_cl_maxdiff"], flush=True)
        profile(dec, "ti2v_decode_cl")
        # fused qkv on the transformer (recompiles)
        tr.fuse_qkv_projections()
        t0 = time.time(); f_one(); torch.cuda.synchronize(); print("compile fused", time.time() - t0, flush=True)
        s_f, o_f = ev_time(f_one)
        out["ti2v_forward_one_fused_s"] = s_f
        out["rel_err_fused"] = float((o_f.float() - o_one.float()).norm() / o_one.float().norm())
        print(f"fused qkv one timestep {s_f:.4f} s err {out['rel_err_fused']}", flush=True)
    else:
        t0 = time.time(); pipe = build(get_preset("t2v-a14b")); print("built", time.time() - t0, flush=True)
        pipe.transformer_2 = None; pipe.text_encoder = None; torch.cuda.empty_cache()
        tr = pipe.transformer
        tokens = 75600
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        g = torch.Generator(dev).manual_seed(0)
        q = torch.randn(1, tokens, 40, 128, device=dev, dtype=torch.bfloat16, generator=g)
        for backend in ("native", "_native_cudnn", "_native_flash"):
            try:
                s, _ = ev_time(lambda: dispatch_attention_fn(q, q, q, backend=backend), 3)
                print(f"attention {backend} {s*1000:.1f} ms = {4*tokens*tokens*40*128/s/1e12:.0f} TFLOP/s", flush=True)
                out[f"attn_{backend}_s"] = s
            except Exception as err:
                print(backend, err)
        del q
        tags = accelerate({"transformer": tr}, dev, tokens, True, ())
        print(tags, flush=True)
        lat = torch.randn(1, 16, 21, 90, 160, device=dev, dtype=torch.bfloat16, generator=g)
        emb = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16, generator=g)
        t_one = torch.tensor([900.0], device=dev)
        f = lambda: tr(hidden_states=lat, timestep=t_one, encoder_hidden_states=emb, return_dict=False)[0]
        t0 = time.time(); f(); torch.cuda.synchronize(); print("compile", time.time() - t0, flush=True)
        s, o = ev_time(f, 2)
        out["a14b_forward_s"] = s
        print("a14b forward", s, flush=True)
        profile(f, "a14b_forward")
        tr.fuse_qkv_projections()
        t0 = time.time(); f(); torch.cuda.synchronize(); print("compile fused", time.time() - t0, flush=True)
        s_f, o_f = ev_time(f, 2)
        out["a14b_forward_fused_s"] = s_f
        out["a14b_rel_err_fused"] = float((o_f.float() - o.float()).norm() / o.float().norm())
        print("a14b fused", s_f, out["a14b_rel_err_fused"], flush=True)
        out["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), f"exp1-{case}.json"), "w"), indent=1, default=str)
