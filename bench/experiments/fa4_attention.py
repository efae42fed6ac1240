"""Self-attention kernels at Wan2.2's shapes: cuDNN, PyTorch's built-in flash kernel, and FlashAttention 4.

    python bench/experiments/fa4_attention.py --iters 30 > fa4-attention.json

FlashAttention 4 is the ``flash-attn-4`` package (CuTe DSL; it has a Hopper forward kernel), called through its
``flash_attn.cute.flash_attn_func`` (torch 2.11's ``activate_flash_attention_impl("FA4")`` expects an older return
signature than flash-attn-4 4.0.0b36 has). Each case is timed sustained (``--iters`` back-to-back calls after 5 warm-ups, CUDA events), since the H200 runs A14B's attention at
its power cap. Output: JSON with seconds per call, TFLOP/s (4·S²·H·D FLOPs) and each kernel's relative L2 error
against cuDNN's output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

#: (tokens, heads) per case; head dim 128 everywhere (Wan2.2 configs; FACTS.md §2 has the token counts).
CASES = {"a14b-720p": (75600, 40), "a14b-480p": (32760, 40), "ti2v-720p": (27280, 24), "ti2v-preview": (2860, 24)}


def timed(fn, iters: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def _sdpa(backend, q, k, v):
    with sdpa_kernel(backend):
        return scaled_dot_product_attention(q, k, v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args()
    from flash_attn.cute import flash_attn_func

    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    for name in args.cases:
        tokens, heads = CASES[name]
        g = torch.Generator("cuda").manual_seed(0)
        q, k, v = (torch.randn(1, heads, tokens, 128, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        flops = 4 * tokens * tokens * heads * 128
        row, outputs = {}, {}
        qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # FA4 takes (batch, tokens, heads, dim)

        def fa4():
            out = flash_attn_func(qb, kb, vb)
            return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

        for label, call in (("cudnn", lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v)),
                            ("flash-builtin", lambda: _sdpa(SDPBackend.FLASH_ATTENTION, q, k, v)),
                            ("fa4", fa4)):
            first = time.perf_counter()
            outputs[label] = call()
            torch.cuda.synchronize()
            first = time.perf_counter() - first
            seconds = timed(call, args.iters)
            ref = outputs["cudnn"].float()
            rel = ((outputs[label].float() - ref).norm() / ref.norm()).item()
            row[label] = {"seconds": seconds, "tflops": flops / seconds / 1e12, "first_call_s": first,
                          "rel_l2_vs_cudnn": rel}
            print(name, label, row[label], file=sys.stderr, flush=True)
        out["cases"][name] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
