"""Compare: a lock resolves to its draft and finals; tables, keyframe grid, previews and the MLflow UI link."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from wanflow import cli
from wanflow.compare import (
    CompareError,
    compare,
    compare_url,
    keyframe_grid,
    metrics_table,
    resolve_runs,
    settings_table,
)

from .lineage import lineage  # noqa: F401  (fixture)


def test_a_lock_resolves_to_its_draft_and_finished_finals(lineage):  # noqa: F811
    store, ids, _ = lineage
    runs = resolve_runs("hero", store)
    assert [r.run_id for r in runs] == [ids["draft"], *ids["finals"]]
    assert [r.stage for r in runs] == ["draft", "final", "final"]
    assert runs[0].label.startswith("draft hero tiny-ti2v") and runs[2].label.startswith("final:first-frame")
    assert [r.run_id for r in resolve_runs("", store)] == [r.run_id for r in runs]  # newest lock by default
    mixed = resolve_runs([ids["other"], "hero", ids["draft"]], store)  # run ids and locks, no repeats
    assert [r.run_id for r in mixed] == [ids["other"], ids["draft"], *ids["finals"]]
    with pytest.raises(CompareError, match="targets: 'nope' is neither a lock"):
        resolve_runs("nope", store)
    with pytest.raises(CompareError, match="targets: '0+' is neither"):
        resolve_runs("0" * 32, store)


def test_tables_keep_what_differs(lineage):  # noqa: F811
    store, ids, _ = lineage
    runs = resolve_runs("hero", store)
    settings = settings_table(runs)
    assert list(settings.index) == [r.label for r in runs]
    assert {"preset", "seed", "stage", "transfer", "draft_run_id", "num_inference_steps"} <= set(settings.columns)
    assert "prompt" not in settings and "width" not in settings  # equal in all three
    assert settings["seed"].tolist() == [1, 2, 3]
    assert settings["transfer"].tolist()[1:] == ["fresh", "first-frame"]
    assert "prompt" in settings_table(runs, only_different=False)
    metrics = metrics_table(runs)
    assert metrics.loc[runs[1].label, "steps_transformer_2"] > 0 and metrics["denoise_s"].notna().all()


def test_keyframe_grid_stacks_the_contact_sheets(lineage, tmp_path):  # noqa: F811
    store, ids, _ = lineage
    runs = resolve_runs("hero", store)
    path = keyframe_grid(runs, tmp_path / "grid.png")
    sheet = Image.open(Path(runs[0].artifact_uri.removeprefix("file://")) / "contact_sheet.png")
    with Image.open(path) as grid:
        assert grid.width == sheet.width and grid.height == 3 * (sheet.height + 18)
    failed = resolve_runs(ids["failed"], store)
    assert keyframe_grid(failed, tmp_path / "none.png") is None


def test_ui_link_has_the_form_of_mlflows_own_route(lineage):  # noqa: F811
    store, ids, _ = lineage
    runs = resolve_runs("hero", store)
    url = compare_url(runs, "http://127.0.0.1:5000/")
    run_list = ",".join(f'"{r}"' for r in [ids["draft"], *ids["finals"]])
    assert url == f'http://127.0.0.1:5000/#/compare-runs?runs=[{run_list}]&experiments=["{runs[0].experiment_id}"]'
    # the route as MLflow's UI builds it (mlflow/server/js/build): "/compare-runs" + ?runs=<JSON>&experiments=<JSON>
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not build.is_dir():
        pytest.skip("this mlflow install has no UI build (mlflow-skinny)")
    route = re.compile(r"\?runs=\$\{JSON\.stringify\(\w+\)\}&experiments=\$\{JSON\.stringify\(\w+\)\}")
    bundles = [p.read_text(errors="ignore") for p in build.glob("*.js")]
    assert any(route.search(text) and '"/compare-runs"' in text for text in bundles)


def test_compare_writes_grid_and_previews(lineage, tmp_path):  # noqa: F811
    store, ids, _ = lineage
    result = compare(["hero"], store, tmp_path / "cmp")
    assert result.grid == tmp_path / "cmp" / "keyframes.png" and result.grid.is_file()
    assert list(result.previews) == [r.label for r in result.runs]
    page = result.previews_html()
    assert page.count("data:image/gif;base64,") == 3 and "final:fresh" in page
    assert ids["draft"] in result.ui_url


def test_cli_compare(lineage, tmp_path, capsys):  # noqa: F811
    store, ids, _ = lineage
    assert cli.main(["compare", "hero", "--tracking-uri", store, "--out", str(tmp_path / "c"), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert [r["run_id"] for r in report["runs"]] == [ids["draft"], *ids["finals"]]
    assert report["grid"] and "#/compare-runs?runs=" in report["ui_url"]
    assert cli.main(["compare", ids["other"], ids["draft"], "--tracking-uri", store, "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" in out and "settings that differ" in out and "#/compare-runs?runs=" in out
    assert cli.main(["compare", "nope", "--tracking-uri", store]) == 2
    assert "error: targets: 'nope' is neither a lock" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert cli.main(["compare", "hero", "--tracking-uri", store, "--out", str(a_file / "x")]) == 2
    assert f"error: out_dir: cannot write to {a_file / 'x'}" in capsys.readouterr().err
