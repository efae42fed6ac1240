"""Prompts are data everywhere, and secrets stay out of runs.

- Code-like prompts pass through the CLI, papermill's parameter injection, file names and MLflow run names without
  being executed and without escaping the output folder; file-name components wanflow makes are sanitized.
- A prompt past MLflow's param limit renders and logs: the param cut and tagged, the full text as ``prompt.txt``,
  and ``spec.json`` renders the same frames again.
- API keys and tokens in the environment never reach a run's params, tags, metric names, artifacts (executed
  notebooks and ``error.txt`` included), the output folders or the logs of a CLI render and a papermill replay.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
import warnings
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import wanflow
from wanflow import cli
from wanflow.media import MAX_NAME_LENGTH, probe_video, safe_name
from wanflow.spec import RenderSpec
from wanflow.tracking import PARAM_VALUE_LIMIT

from .conftest import PROMPT
from .test_bad_input import notebook_cells

ROOT = Path(__file__).resolve().parents[1]
EXPLORE_NB = ROOT / "notebooks" / "01_explore.ipynb"

#: A 10,000-character prompt: past MLflow's 6,000-character param limit and the text encoder's 512 tokens.
LONG = ("a red circle moving left on a blue background, " * 250)[:10_000]
EVIL = {
    "path": "../../etc/passwd",
    "code": "\"; import os; os.system('touch pwned') #",
    "code-single": "'); __import__('os').system('touch pwned2'); ('",
    "backslash-quote": 'x\\"; __import__("os").system("touch pwned3") #\\',
    "template": "{{7*7}} ${HOME} %(x)s {0} <% 7*7 %>",
    "shell": "$(touch x) `touch y`; rm -rf ~ &",
    "emoji": "a red circle 🎬🔴 moving ← left, ünïcödé, 中文",
    "newlines": "line one\nline two\r\n\ttabbed \"quoted\" 'single'",
    "long": LONG,
}
#: Files a prompt would create if it were run as code or shell.
PWNED = ("pwned", "pwned2", "pwned3", "x", "y")
#: The short ones in one prompt (one render instead of eight), and the long one.
RENDERED = {"short ones": " | ".join(text for label, text in EVIL.items() if label != "long"), "long": LONG}


@pytest.mark.parametrize("text", [*EVIL.values(), "..", ".hidden", "a\x00b\x1bc", "CON", ""], ids=lambda t: repr(t[:12]))
def test_safe_name_keeps_a_name_in_its_folder(text):
    name = safe_name(text)
    assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", name), name
    assert ".." not in name and len(name) <= MAX_NAME_LENGTH
    assert safe_name(name) == name  # a safe name stays as it is
    assert safe_name("../../etc/passwd") == "etc-passwd" and safe_name("tiny-ti2v") == "tiny-ti2v"


def test_papermill_injects_prompts_as_data(tmp_path, monkeypatch):
    """papermill writes a notebook parameter as a Python literal; the injected cell, run, binds the exact text and
    runs nothing (a broken escape would touch the PWNED files in the current folder)."""
    monkeypatch.chdir(tmp_path)
    for text in EVIL.values():
        cells, injected = notebook_cells(EXPLORE_NB, {"headless_prompt": text, "preset": "tiny-ti2v"})
        source = cells[injected].source
        namespace: dict = {}
        exec(compile(source, "<injected parameters>", "exec"), namespace)  # noqa: S102 - what the kernel runs
        assert namespace["headless_prompt"] == text
        assigned = [n for n in ast.parse(source).body if isinstance(n, ast.Assign)]
        assert all(isinstance(n.value, ast.Constant) for n in assigned)  # literals only, no calls
    assert not any((tmp_path / name).exists() for name in PWNED)


def test_evil_prompts_render_as_data(tmp_path, monkeypatch, fresh_store, capsys):
    """Through the CLI into the default output folder: one folder per render under outputs/ with a safe name, the
    prompt byte for byte in the params (cut only when too long), spec.json and the mp4's comment; a safe run name;
    nothing run, nothing written outside outputs/ and mlruns/."""
    store = fresh_store
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long prompt's 512-token warning
        for label, text in RENDERED.items():
            assert cli.main(["render", text, "--model", "tiny-ti2v", "--seed", "1", "--quiet", "--json",
                             "--tracking-uri", store]) == 0, label
            result = json.loads(capsys.readouterr().out)
            video = Path(result["video"])
            assert video.parent.parent == tmp_path / "outputs", video
            assert re.fullmatch(r"\d{8}-\d{6}-tiny-ti2v-[0-9a-f]{8}", video.parent.name)
            run = client.get_run(result["run_id"])
            param = run.data.params["prompt"]
            assert param == text if len(text) <= PARAM_VALUE_LIMIT else text.startswith(param[:-1])
            assert re.fullmatch(r"draft: [\w\- ]{1,48}", run.info.run_name), run.info.run_name
            assert "/" not in run.info.run_name and ".." not in run.info.run_name
            assert RenderSpec.load(video.parent / "spec.json").prompt == text
            assert json.loads(probe_video(video)["tags"]["comment"])["prompt"] == text
    assert not any((tmp_path / name).exists() or Path(name).exists() for name in PWNED)
    top = {p.name for p in tmp_path.iterdir()}
    assert top == {"outputs", "mlruns"}, top
    assert len(list((tmp_path / "outputs").iterdir())) == len(RENDERED)


def test_a_long_prompt_renders_logs_and_round_trips(tmp_path, fresh_store):
    """10,000 characters of prompt and 7,000 of negative prompt: MLflow keeps 6,000 per param (3.17.2), so wanflow
    cuts them itself, tags the run and stores the full texts; spec.json renders the same frames again; the studio
    loads the full prompt back."""
    store = fresh_store
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from wanflow.explore import history_rows

    assert PARAM_VALUE_LIMIT == MAX_PARAM_VAL_LENGTH == 6000
    negative = ("blurry, " * 1000)[:7000]
    spec = RenderSpec(preset="tiny-ti2v", prompt=LONG, negative_prompt=negative, seed=5)
    with pytest.warns(UserWarning, match="prompt: .* tokens; the text encoder reads the first 512"):
        first = wanflow.render(spec, out_dir=tmp_path / "a", tracking_uri=store, progress=False)
    client = MlflowClient(store)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    for field, text in (("prompt", LONG), ("negative_prompt", negative)):
        param = run.data.params[field]
        assert len(param) == PARAM_VALUE_LIMIT and param.endswith("…") and text.startswith(param[:-1])
        stored = client.download_artifacts(first.run_id, f"{field}.txt", str(tmp_path / "dl"))
        assert Path(stored).read_text(encoding="utf-8") == text
    assert run.data.tags["params_truncated"] == "prompt,negative_prompt"
    assert run.data.tags["prompt_truncated"] == "true"  # and the text encoder's 512 tokens
    saved = RenderSpec.load(client.download_artifacts(first.run_id, "spec.json", str(tmp_path / "dl")))
    assert saved == spec and saved.prompt == LONG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = wanflow.render(saved, out_dir=tmp_path / "b", tracking_uri=store, progress=False)
    assert again.frames_match is True and again.earlier_run_id == first.run_id
    (row,) = [r for r in history_rows(store) if r.run_id == first.run_id]
    assert row.truncated == ("prompt", "negative_prompt")
    state = row.state()
    assert state.prompt == LONG and state.negative_prompt == negative and state.to_spec() == spec


def test_short_params_are_not_cut():
    from wanflow.tracking import fit_params

    params = RenderSpec(preset="tiny-ti2v", prompt=PROMPT, seed=1).to_params()
    assert fit_params(params) == (params, [])
    cut, names = fit_params({"a": "x" * 10, "b": "y"}, limit=4)
    assert cut == {"a": "xxx…", "b": "y"} and names == ["a"]


# --- secrets ----------------------------------------------------------------------------------------------------
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "DASHSCOPE_API_KEY", "OPENAI_API_KEY")


def find_canaries(canaries: dict[str, str], texts: dict[str, bytes]) -> list[str]:
    """``"<where>: <variable>"`` for every canary value found in ``texts`` (raw bytes, or JSON-escaped)."""
    hits = []
    for where, data in texts.items():
        for name, value in canaries.items():
            if value.encode() in data or json.dumps(value)[1:-1].encode() in data:
                hits.append(f"{where}: {name}")
    return hits


def test_the_canary_scan_finds_a_planted_secret():
    canaries = {"HF_TOKEN": "hf_canary_0123"}
    assert find_canaries(canaries, {"notebook": b'{"text": "token hf_canary_0123"}'}) == ["notebook: HF_TOKEN"]
    assert find_canaries(canaries, {"clean": b"nothing here"}) == []


def test_secrets_never_reach_runs_notebooks_or_logs(tmp_path, fresh_store, monkeypatch, capfd):
    """Unique canary values in the usual token variables; a CLI render (``wanflow render``), a render through
    the API, two locks and a papermill replay of both (one renders, one fails before rendering, so a failed
    notebook and error.txt exist); then every param, tag, metric name and run name, the store's database itself,
    every file under the test folder (artifacts, outputs, executed notebooks, error.txt) and everything written to
    stdout/stderr (the CLI's, this process's and the kernels') are scanned for the canaries."""
    store = fresh_store
    from wanflow.locks import lock
    from wanflow.replay import replay

    canaries = {name: f"canary-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_NAMES}
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    logs: dict[str, bytes] = {}
    assert cli.main(["render", EVIL["code"], "--model", "tiny-ti2v", "--seed", "3", "--tracking-uri", store,
                     "--out", str(tmp_path / "hero"), "--json"]) == 0
    captured = capfd.readouterr()
    logs["cli stdout"], logs["cli stderr"] = captured.out.encode(), captured.err.encode()
    lock(json.loads(captured.out)["run_id"], "hero", store)
    short = wanflow.render(RenderSpec(preset="tiny-ti2v", prompt=EVIL["shell"], seed=3, num_frames=5),
                           out_dir=tmp_path / "short", tracking_uri=store, progress=False)
    lock(short.run_id, "short", store)
    lines: list[str] = []
    summary = replay(None, final_preset="tiny-i2v-a14b", mode="first-frame", frame_index=6, tracking_uri=store,
                     out_dir=tmp_path / "replay", report=lines.append)
    assert lines[-1] == "1 rendered, 0 skipped, 1 failed", lines
    captured = capfd.readouterr()
    logs["replay report"] = "\n".join(lines).encode()
    logs["this process and the kernels"] = (captured.out + captured.err).encode()

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("wanflow").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED", "FAILED"}
    texts = dict(logs)
    artifacts = set()
    for run in runs:
        data = run.data
        texts[f"run {run.info.run_id} fields"] = json.dumps(
            [data.params, data.tags, sorted(data.metrics), run.info.run_name], ensure_ascii=False).encode()
        artifacts |= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"02_render.ipynb", "error.txt", "video.mp4", "spec.json"} <= artifacts
    assert {o.status for o in summary.outcomes} == {"rendered", "failed"}
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sum(p.name == "02_render.ipynb" for p in files) >= 4 and any(p.name == "error.txt" for p in files)
    texts.update({str(p.relative_to(tmp_path)): p.read_bytes() for p in files})  # the store's db among them
    assert find_canaries(canaries, texts) == []
