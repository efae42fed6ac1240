"""A store with a lock, its draft and finals (lineage tags as the replay writes them), built once per session and
shared by the compare tests and the compare notebook's test (renders are the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import wanflow
from wanflow.locks import lock
from wanflow.spec import RenderSpec

from .conftest import PROMPT

_BUILT: dict = {}


def make_lineage(folder: Path, store: str) -> dict:
    """A locked (``hero``) tiny-ti2v draft, two finished tiny-t2v-a14b finals from it (``fresh``, ``first-frame``),
    one FAILED final, and an unrelated draft. Returns their run ids: ``draft``, ``finals``, ``failed``, ``other``."""
    def draw(spec, name, **kwargs):
        return wanflow.render(spec, out_dir=folder / name, tracking_uri=store, progress=False, **kwargs).run_id

    draft = draw(RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1), "draft")
    lock(draft, "hero", store)
    finals = []
    for mode, seed in (("fresh", 2), ("first-frame", 3)):
        tags = {"lock_name": "hero", "draft_run_id": draft, "transfer": mode}
        finals.append(draw(RenderSpec(preset="tiny-t2v-a14b", prompt=PROMPT, seed=seed), mode, stage="final",
                           tags=tags))
    client = MlflowClient(store)
    failed = client.create_run(client.get_experiment_by_name("wanflow").experiment_id,
                               tags={"stage": "final", "draft_run_id": draft, "lock_name": "hero"})
    client.set_terminated(failed.info.run_id, "FAILED")
    other = draw(RenderSpec(preset="tiny-ti2v", prompt="something else", seed=4), "other")
    return {"draft": draft, "finals": finals, "failed": failed.info.run_id, "other": other}


@pytest.fixture
def lineage(tmp_path_factory):
    """``(store, ids, folder)`` of :func:`make_lineage`, built on first use in the session. Read-only: tests
    must not add runs or locks to this store."""
    if not _BUILT:
        folder = tmp_path_factory.mktemp("lineage")
        store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        _BUILT["value"] = (store, make_lineage(folder, store), folder)
    return _BUILT["value"]
