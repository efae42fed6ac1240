"""The `wanflow` command: help, models, render, history, ui; bad input exits 2 with a field-naming message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wanflow import cli
from wanflow.media import probe_video

from .conftest import PROMPT


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "wanflow.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("models", "render", "history", "ui"):
        assert command in out.stdout
    render_help = run_cli("render", "--help").stdout
    for option in ("--model", "--seed", "--steps", "--guidance-2", "--frames", "--image", "--tracking-uri",
                   "--offload-model", "--t5-cpu", "--convert-model-dtype", "--spec"):
        assert option in render_help


def test_models_lists_presets_with_official_settings(capsys):
    assert cli.main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["t2v-a14b"]["flow_shift"] == 12.0 and rows["t2v-a14b"]["guidance"] == "4 / 3"
    assert rows["ti2v-5b"]["sizes"] == "1280x704 704x1280"
    assert rows["ti2v-5b"]["source"] == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


def test_readme_demo_render_makes_a_video_and_a_run(tmp_path):
    """The render that scripts/quickstart.sh (the README's first command) runs, in a fresh folder."""
    out = run_cli("render", PROMPT, "--seed", "0", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    video = tmp_path / lines["video"].strip()
    assert video.is_file() and probe_video(video)["codec"] == "h264"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    history = run_cli("history", "--json", cwd=tmp_path)
    (row,) = json.loads(history.stdout)
    assert row["run_id"] == lines["run_id"].strip() and row["status"] == "FINISHED" and row["prompt"] == PROMPT
    table = run_cli("history", cwd=tmp_path).stdout
    assert row["run_id"][:12] in table and "FINISHED" in table
    header = table.splitlines()[0].split()
    assert "approximations" in header and table.splitlines()[1].split()[header.index("approximations")] == "none"


def test_render_respects_tracking_uri_env_and_spec_rerender(tmp_path, store):
    out_a = tmp_path / "a"
    assert cli.main(["render", PROMPT, "--model", "tiny-t2v-a14b", "--seed", "4", "--out", str(out_a),
                     "--quiet", "--tracking-uri", store]) == 0
    spec_path = out_a / "spec.json"
    assert cli.main(["render", "--spec", str(spec_path), "--out", str(tmp_path / "b"), "--no-log", "--quiet"]) == 0
    first, second = probe_video(out_a / "video.mp4"), probe_video(tmp_path / "b" / "video.mp4")
    assert (first["frames"] == second["frames"]).all()
    env_out = run_cli("history", "--json", env={"MLFLOW_TRACKING_URI": store}, cwd=tmp_path)
    assert len(json.loads(env_out.stdout)) == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "tiny-ti2v", "--height", "70"], "height: 70 must be a multiple of 32"),
        (["--model", "tiny-ti2v", "--frames", "10"], "num_frames: 10 must be 4k+1"),
        (["--model", "tiny-ti2v", "--guidance-2", "3"], "guidance_scale_2: only for two-expert presets"),
        (["--model", "wan-9000"], "unknown model 'wan-9000'"),
        (["--model", "tiny-i2v-a14b"], "image: tiny-i2v-a14b is image-to-video only"),
        (["--image", "/no/such.png"], "image: /no/such.png does not exist"),
        (["--seed", "-5"], "seed: -5 is out of range"),
        (["--device", "quantum"], "device: unknown device 'quantum'"),
        (["--device", "meta"], "device: 'meta' is not supported; use auto, cpu, cuda, cuda:N or mps"),
        (["--device", "xpu"], "device: 'xpu' is not supported"),
        (["--device", "cpu:1"], "device: 'cpu:1' is not supported"),
        (["--model", "ti2v-5b"], "preset: ti2v-5b's weights for Wan-AI/Wan2.2-TI2V-5B-Diffusers not found"),
    ],
)
def test_bad_input_exits_2_naming_the_field(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["render", PROMPT, "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("outputs/*/video.mp4"))


def test_missing_model_is_refused_before_any_run_or_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["render", PROMPT, "--model", "ti2v-5b", "--quiet"]) == 2
    assert cli.main(["history", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_prompt_is_required_without_spec(capsys):
    assert cli.main(["render"]) == 2
    assert "prompt: give a PROMPT, or --spec FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, words",
    [("[1, 2]", "holds a JSON list, not an object"), ("{oops", "is not valid JSON"),
     (b"\xff\xfe", "is not UTF-8 text"), (None, "is a folder"), ("missing", "does not exist")],
)
def test_bad_spec_files_name_the_file(tmp_path, capsys, content, words):
    path = tmp_path / "spec.json"
    if content is None:
        path.mkdir()
    elif content == "missing":
        pass
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert cli.main(["render", "--spec", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: spec: {path}" in err and words in err, err


@pytest.mark.parametrize(
    "uri, words",
    [("nonsense://foo", "unknown scheme 'nonsense'"), ("file:///tmp/x", "is a file store"),
     ("/tmp/plain/path", "is a file store"), ("http://127.0.0.1:9", "no MLflow server answers at http://127.0.0.1:9")],
)
def test_bad_tracking_uris_fail_fast_and_leave_nothing(tmp_path, capsys, monkeypatch, uri, words):
    import time

    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    assert cli.main(["render", PROMPT, "--quiet", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - started < 60  # MLflow's own client retries for minutes
    err = capsys.readouterr().err
    assert "tracking_uri: " in err and words in err, err
    assert not (tmp_path / "o").exists()  # the folder it made is removed again
    assert cli.main(["history", "--tracking-uri", uri]) == 2


def test_bad_numbers_for_history_and_ui_are_argparse_errors(capsys):
    for argv in (["history", "--limit", "0"], ["history", "--limit", "abc"], ["ui", "--port", "99999"],
                 ["ui", "--port", "abc"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "port: '99999' is not a TCP port; use an integer 1..65535" in err
    assert "port: 'abc' is not a TCP port; use an integer 1..65535" in err
    assert "argument --limit: 'abc' is not a positive integer" in err


def test_ui_binds_to_localhost_and_opens_the_runs_table(tmp_path, monkeypatch, capsys, store):
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    assert cli.main(["ui", "--tracking-uri", store, "--port", "5123"]) == 0
    (argv,) = calls
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--backend-store-uri") + 1] == store
    assert "http://127.0.0.1:5123/#/experiments/" in capsys.readouterr().out


def test_history_is_friendly_when_empty(tmp_path, capsys, store):
    assert cli.main(["history", "--tracking-uri", store]) == 0
    assert "no renders yet" in capsys.readouterr().out
    assert cli.main(["history", "--tracking-uri", store, "--stage", "final"]) == 0
    assert "no finals yet: lock a draft" in capsys.readouterr().out

