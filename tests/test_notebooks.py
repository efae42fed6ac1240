"""Notebooks: committed without outputs, documented parameters, and 01_explore / 03_compare run headless under
papermill on the tiny presets."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import nbformat
import papermill
import pytest

import wanflow
from wanflow.locks import list_locks

from .conftest import PROMPT
from .kernelspec import venv_kernel  # noqa: F401  (fixture)
from .lineage import lineage  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def repository_notebooks() -> list[Path]:
    """Every notebook git would commit: tracked, plus untracked ones not ignored (so a new notebook is checked
    before its first commit). Falls back to notebooks/*.ipynb outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.ipynb"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(NOTEBOOKS.glob("*.ipynb"))
    return sorted(ROOT / name for name in listed if (ROOT / name).is_file())


def test_the_explore_and_compare_notebooks_exist():
    names = {p.name for p in repository_notebooks()}
    assert {"01_explore.ipynb", "03_compare.ipynb"} <= names


@pytest.mark.parametrize("path", repository_notebooks(), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; strip them with "
                       f"`nbstripout {path.relative_to(ROOT)}` (and `nbstripout --install` once, see README)")
    assert not {"widgets", "papermill"} & set(nb.metadata), f"{path.name}: widget state or papermill metadata"


def test_git_strips_notebooks_through_nbstripout():
    attributes = (ROOT / ".gitattributes").read_text().splitlines()
    assert "*.ipynb filter=nbstripout" in attributes
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("nbstripout") for dep in extras["notebooks"])


@pytest.mark.parametrize("name, expected", [
    ("01_explore.ipynb", {"preset": "str", "tracking_uri": "str", "output_dir": "str", "headless_prompt": "str",
                          "headless_seed": "int"}),
    ("03_compare.ipynb", {"targets": "str", "tracking_uri": "str", "output_dir": "str", "ui_base": "str"}),
])
def test_parameters_are_typed_and_documented(name, expected):
    params = papermill.inspect_notebook(str(NOTEBOOKS / name))
    assert {key: value["inferred_type_name"] for key, value in params.items()} == expected
    assert all(value["help"] for value in params.values())


def _outputs(nb, mime: str) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if mime in o.get("data", {})]


#: Appended to 01_explore in the kernel test: the studio the notebook built, clicked as a user would.
CLICKS = """
import json
studio.prompt.value = {prompt!r}
studio.seed_mode.value = "keep"
studio.seed.value = 7
studio.generate_button.click()
studio.lock_name.value = "kernel-hero"
studio.lock_button.click()
print(json.dumps({{"run_id": studio.current_run_id, "progress": studio.progress.value, "errors": studio.errors.value,
                  "history": [[row.run_id, row.lock] for row in studio.rows]}}))
"""


def test_explore_runs_headless_and_its_studio_works_in_the_kernel(venv_kernel, store, tmp_path):  # noqa: F811
    """01_explore under papermill renders its headless draft without clicks; then, in the same kernel, clicking
    the notebook's own studio (Generate, Lock) makes a run and a lock, and the history lists both renders."""
    notebook = nbformat.read(NOTEBOOKS / "01_explore.ipynb", as_version=4)
    shipped = len(notebook.cells)
    notebook.cells.append(nbformat.v4.new_code_cell(CLICKS.format(prompt=PROMPT)))
    out = tmp_path / "01.ipynb"
    papermill.execute_notebook(
        notebook, str(out), kernel_name=venv_kernel, cwd=str(tmp_path), progress_bar=False,
        parameters={"preset": "tiny-ti2v", "tracking_uri": store, "output_dir": str(tmp_path / "renders"),
                    "headless_prompt": PROMPT, "headless_seed": 11},
    )
    executed = nbformat.read(out, as_version=4)
    own = nbformat.v4.new_notebook(cells=executed.cells[:shipped + 1])  # + papermill's injected parameters
    assert _outputs(own, "image/gif")  # the headless draft's preview, inline
    assert _outputs(own, "application/vnd.jupyter.widget-view+json")  # the studio

    runs = wanflow.history(store)  # newest first: the clicked render, then the headless one
    assert runs[["status", "stage", "preset", "seed", "prompt"]].values.tolist() == [
        ["FINISHED", "draft", "tiny-ti2v", 7, PROMPT], ["FINISHED", "draft", "tiny-ti2v", 11, PROMPT]]
    assert len(list((tmp_path / "renders").glob("*/video.mp4"))) == 2
    headless_run = runs["run_id"][1]
    assert any(headless_run in o["data"]["text/html"] for o in _outputs(own, "text/html"))  # the history table

    (stream,) = [o for o in executed.cells[-1].outputs if o.get("name") == "stdout"]
    clicked = json.loads(stream["text"].strip().splitlines()[-1])
    assert clicked["run_id"] == runs["run_id"][0] and clicked["errors"] == ""
    assert clicked["progress"] == runs["num_inference_steps"][0]
    assert list_locks(store)[["name", "run_id"]].values.tolist() == [["kernel-hero", clicked["run_id"]]]
    assert clicked["history"] == [[clicked["run_id"], "kernel-hero"], [headless_run, ""]]


def test_compare_runs_headless(venv_kernel, lineage, tmp_path):  # noqa: F811
    store, ids, _ = lineage
    out = tmp_path / "03.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_compare.ipynb"), str(out), kernel_name=venv_kernel, cwd=str(tmp_path),
        progress_bar=False, parameters={"targets": "hero", "tracking_uri": store,
                                        "output_dir": str(tmp_path / "cmp")},
    )
    executed = nbformat.read(out, as_version=4)
    assert (tmp_path / "cmp" / "keyframes.png").is_file()
    assert _outputs(executed, "image/png")  # the keyframe grid
    pages = [o["data"]["text/html"] for o in _outputs(executed, "text/html")]
    assert any(page.count("data:image/gif;base64,") == 3 for page in pages)  # three previews side by side
    assert any("#/compare-runs?runs=" in page and ids["finals"][1] in page for page in pages)
    assert any("transfer" in page and "first-frame" in page for page in pages)  # the settings table
