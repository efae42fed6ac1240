"""wanflow: Wan2.2 video diffusion from prototype to production.

Explore prompts on the dense TI2V-5B model (or the micro models on a laptop), log every render to MLflow, lock
the good drafts, replay them on the A14B two-expert model, compare in the MLflow UI.

    >>> import wanflow
    >>> spec = wanflow.RenderSpec(preset="tiny-ti2v", prompt="a red circle moving left on a blue background", seed=0)
    >>> result = wanflow.render(spec)          # doctest: +SKIP
    >>> wanflow.history()                       # doctest: +SKIP
"""

__version__ = "0.1.0"

from wanflow.loading import LoadOptions, ModelNotFoundError  # noqa: E402
from wanflow.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset  # noqa: E402
from wanflow.render import RenderResult, render  # noqa: E402
from wanflow.spec import RenderSpec  # noqa: E402
from wanflow.tracking import history  # noqa: E402

__all__ = [
    "DEFAULT_PRESET", "PRESETS", "LoadOptions", "ModelNotFoundError", "Preset", "RenderResult", "RenderSpec",
    "get_preset", "history", "render",
]
