"""Observe which expert runs at each denoising step, and the guidance that reaches the scheduler."""

from __future__ import annotations

import contextlib

import torch
from diffusers import UniPCMultistepScheduler


@contextlib.contextmanager
def observe_experts(monkeypatch, experts: dict[str, torch.nn.Module]):
    """Inside the block, each expert returns constants (cond 1.0, uncond 0.0; diffusers calls cond first in every
    step), so with CFG the noise prediction reaching the scheduler equals the guidance scale used. Yields ``seen``,
    a list filled with ``(expert, timestep, prediction)`` per scheduler step; the hooks go when the block ends."""
    calls: list[str] = []
    seen: list[tuple[str, float, float]] = []

    def constant(name):
        def hook(module, args, kwargs, output):
            calls.append(name)
            return (torch.full_like(output[0], 1.0 if len(calls) % 2 == 1 else 0.0),)
        return hook

    handles = [module.register_forward_hook(constant(name), with_kwargs=True) for name, module in experts.items()]
    original = UniPCMultistepScheduler.step

    def step(self, model_output, timestep, sample, **kwargs):
        seen.append((calls[-1], float(timestep), float(model_output.mean())))
        return original(self, model_output, timestep, sample, **kwargs)

    monkeypatch.setattr(UniPCMultistepScheduler, "step", step)
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def assert_routed(seen, steps, boundary: float, guidance: float, guidance_2: float) -> list[str]:
    """Every observed step ran ``transformer`` with ``guidance`` at ``t >= boundary`` and ``transformer_2`` with
    ``guidance_2`` below, and the pipeline's own step records agree. Returns the experts in step order."""
    import pytest

    for (expert, t, prediction), event in zip(seen, steps, strict=True):
        if t >= boundary:
            assert expert == "transformer" and prediction == pytest.approx(guidance)
        else:
            assert expert == "transformer_2" and prediction == pytest.approx(guidance_2)
        assert event.expert == expert and event.timestep == pytest.approx(t)
    return [expert for expert, _, _ in seen]
