"""A Jupyter kernelspec that runs this interpreter (the venv's), for notebook tests.

The stock ``python3`` kernelspec runs whatever ``python`` is first on PATH, which may not be the venv; a
user-level ``ipykernel install`` is not there on CI. So the tests write their own kernelspec, pointing at
``sys.executable``, into a temporary folder put first on ``JUPYTER_PATH``, and pass its name as ``kernel_name``.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

KERNEL_NAME = "wanflow-test-venv"


@pytest.fixture(scope="session")
def venv_kernel(tmp_path_factory):
    """The name of a kernelspec that runs ``sys.executable -m ipykernel_launcher``."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wanflow tests (venv)",
        "language": "python",
    }))
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(root), previous) if p)
    yield KERNEL_NAME
    if previous is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = previous
