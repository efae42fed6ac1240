"""wanflow's own exceptions, importable without torch, diffusers or MLflow (so the CLI can catch them cheaply)."""


class ModelNotFoundError(FileNotFoundError):
    """A preset's weights are not where wanflow looked; the message lists the places and how to get them."""


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written; the message names the URI."""
