"""wanflow: Wan2.2 video diffusion from prototype to production.

Explore prompts on the dense TI2V-5B model (or the micro models on a laptop), log every render to MLflow, lock
the good drafts, replay them on the A14B two-expert model, compare in the MLflow UI.

    >>> import wanflow
    >>> spec = wanflow.RenderSpec(preset="tiny-ti2v", prompt="a red circle moving left on a blue background", seed=0)
    >>> result = wanflow.render(spec)          # doctest: +SKIP
    >>> wanflow.history()                       # doctest: +SKIP

Names are imported on first use, so ``import wanflow`` (and ``wanflow --help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DEFAULT_PRESET": "wanflow.presets",
    "PRESETS": "wanflow.presets",
    "Preset": "wanflow.presets",
    "get_preset": "wanflow.presets",
    "RenderSpec": "wanflow.spec",
    "LoadOptions": "wanflow.loading",
    "ModelNotFoundError": "wanflow.exceptions",
    "ModelLoadError": "wanflow.exceptions",
    "DiskFullError": "wanflow.exceptions",
    "TrackingError": "wanflow.exceptions",
    "RenderResult": "wanflow.rendering",
    "render": "wanflow.rendering",
    "history": "wanflow.tracking",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wanflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
