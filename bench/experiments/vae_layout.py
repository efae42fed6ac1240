"""Session-6 experiment (2026-11-29), kept as it ran: the TI2V-5B 720p VAE decode with channels-first and
channels-last convolution weights (wanflow.acceleration.channels_last), same process, cuDNN autotuning on.
Output: the last section of bench/results/exact-path-experiments.log.
Usage on a GPU, from the repository root: python bench/experiments/vae_layout.py"""
import sys, os, time, torch
sys.path.insert(0, os.getcwd())
from bench.fullsize import _vae
from wanflow.acceleration import channels_last
torch.backends.cudnn.benchmark = True
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    vae = _vae("ti2v-5b")
torch.set_default_dtype(torch.float32)
z = torch.randn(1, 48, 31, 44, 80, device="cuda", dtype=torch.bfloat16)
def t():
    torch.cuda.synchronize(); s = time.perf_counter()
    with torch.no_grad():
        v = vae.decode(z, return_dict=False)[0]
    torch.cuda.synchronize(); return time.perf_counter() - s, v
t(); a1, va = t(); a2, _ = t()
channels_last(vae)
t(); b1, vb = t(); b2, _ = t()
print(f"decode channels-first {a1:.3f} {a2:.3f} s; channels-last {b1:.3f} {b2:.3f} s; "
      f"max diff {(va.float() - vb.float()).abs().max().item():.4f} "
      f"mean {(va.float() - vb.float()).abs().mean().item():.5f}",
      flush=True)
