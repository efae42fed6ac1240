"""The bad-input catalog: one table of bad inputs across every entry point (the Python API, the CLI, papermill
parameters of the notebooks and the replay, the studio), each checked the same way:

- the error type (or the CLI's exit status 2, with no traceback), a message naming the field and what is allowed;
- a fresh SQLite store per case: no run left RUNNING; where the input alone decides, no run at all and no model
  loaded (``generate`` and ``DiffusionPipeline.from_pretrained`` are counted);
- the output folder holds no file that looks complete (no ``video.mp4``, no temporary ``*.partial*`` file).

Cases that need a model reuse the session's tiny models (the loaded pipeline stays cached between cases); cases
decided by the input alone load nothing, so the whole table runs in well under a minute.
"""

from __future__ import annotations

import errno
import html
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat
import pytest
from PIL import Image

import wanflow
from wanflow import cli
from wanflow.exceptions import DiskFullError, ModelLoadError, ModelNotFoundError, TrackingError
from wanflow.locks import LockError
from wanflow.presets import get_preset
from wanflow.spec import MAX_PROMPT_CHARS, MAX_SEED, explain
from wanflow.transfer import TransferError

from .conftest import PROMPT

ROOT = Path(__file__).resolve().parents[1]
RENDER_NB = ROOT / "notebooks" / "02_render.ipynb"
EXPLORE_NB = ROOT / "notebooks" / "01_explore.ipynb"
DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@dataclass(frozen=True)
class P:
    """A placeholder in a case's input for a path its setup made: ``P("image")``, or ``P("file") / "x"`` below it."""

    name: str
    rest: str = ""

    def __truediv__(self, rest: str) -> "P":
        return P(self.name, rest)


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        entry: ``api`` (``RenderSpec`` + ``wanflow.render``), ``cli`` (``wanflow ...`` in-process, or
            ``python -m wanflow.cli`` with ``input["subprocess"]``), ``papermill`` (a notebook's cells after
            papermill injected the parameters; ``input["kernel"]`` runs it in a real kernel; ``replay`` calls
            ``wanflow.replay.replay``), ``studio`` (widgets set, Generate clicked; ``explore`` calls
            ``do_generate``).
        input: what the entry point gets (see the runners).
        field: the field the message must name (``field:``).
        allowed: a fragment of what is allowed (or what to do), which the message must hold.
        before_load: decided by the input alone: no run is created and no model loaded.
        error: the exception type (api, papermill); None for cli (exit status 2) and studio (shown in the UI).
        setup: makes files or monkeypatches; returns placeholders for :class:`P`.
        run_status: the status the one run must end with when the case gets past the input checks.
        warns: a warning, not an error (the run finishes).
    """

    id: str
    entry: str
    input: dict
    field: str
    allowed: str
    before_load: bool = True
    error: type | None = ValueError
    setup: Callable[[Path, pytest.MonkeyPatch], dict] | None = None
    run_status: str | None = None
    warns: bool = False
    also: tuple[str, ...] = ()


# --- setups: files a case needs ---------------------------------------------------------------------------------
def _png(tmp: Path, mode: str = "RGB", name: str = "first.png") -> Path:
    path = tmp / name
    Image.new(mode, (64, 64)).save(path)
    return path


def text_as_png(tmp, mp):
    path = tmp / "photo.png"
    path.write_text("not an image")
    return {"image": path}


def sixteen_bit_png(tmp, mp):
    return {"image": _png(tmp, "I;16", "depth16.png")}


def image_folder(tmp, mp):
    (tmp / "frames").mkdir()
    return {"image": tmp / "frames"}


def unreadable_png(tmp, mp):
    """Permission bits do not stop root (the tests may run as root), so the open itself is refused."""
    path = _png(tmp, name="locked.png")
    real_open = Image.open

    def guarded(fp, *args, **kwargs):
        if Path(str(fp)) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(fp, *args, **kwargs)

    mp.setattr(Image, "open", guarded)
    return {"image": path}


def rgb_png(tmp, mp):
    return {"image": _png(tmp)}


def a_file(tmp, mp):
    path = tmp / "not-a-folder"
    path.write_text("x")
    return {"file": path}


def _tiny_copy(tmp: Path, name: str = "tiny-ti2v") -> Path:
    from wanflow import tiny

    copy = tmp / f"model-{name}"
    shutil.copytree(tiny.materialize(get_preset(name)), copy)
    return copy


WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def truncated_model(tmp, mp):
    model = _tiny_copy(tmp)
    data = (model / WEIGHTS).read_bytes()
    (model / WEIGHTS).write_bytes(data[: len(data) // 2])
    return {"model": model}


def garbled_header_model(tmp, mp):
    model = _tiny_copy(tmp)
    data = bytearray((model / WEIGHTS).read_bytes())
    data[8:40] = b"\xff" * 32
    (model / WEIGHTS).write_bytes(bytes(data))
    return {"model": model}


def garbled_dtype_model(tmp, mp):
    """A header that parses and fits the file, but names a dtype safetensors does not know: only loading finds it."""
    model = _tiny_copy(tmp)
    data = (model / WEIGHTS).read_bytes()
    (model / WEIGHTS).write_bytes(data.replace(b'"F32"', b'"X32"', 1))
    return {"model": model}


def model_without_transformer(tmp, mp):
    model = _tiny_copy(tmp)
    shutil.rmtree(model / "transformer")
    return {"model": model}


def model_without_weights(tmp, mp):
    model = _tiny_copy(tmp)
    (model / WEIGHTS).unlink()
    return {"model": model}


def disk_full_in_ffmpeg(tmp, mp):
    """A real ENOSPC from ffmpeg: the video's temporary file in the render's staging folder is a link to /dev/full."""
    import wanflow.media as media

    out = tmp / "out"
    out.mkdir()
    mp.setattr(media, "secrets", types.SimpleNamespace(token_hex=lambda n: "full"))
    import wanflow.tracking as tracking

    real = tracking.staging_folder

    def staging_with_full_disk(folder, run_id):  # a logged render writes into its staging folder
        path = real(folder, run_id)
        path.mkdir(parents=True, exist_ok=True)
        link = path / ".video.full.partial.mp4"
        if not link.is_symlink():
            link.symlink_to("/dev/full")
        return path

    mp.setattr(tracking, "staging_folder", staging_with_full_disk)
    return {}


def disk_full_in_gif(tmp, mp):
    """The preview writer runs out of space half-way through its file."""
    import wanflow.media as media

    def half_then_full(frames, path, fps):
        Path(path).write_bytes(b"GIF89a" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    mp.setattr(media, "_save_preview_gif", half_then_full)
    return {}


def bad_spec_file(tmp, mp):
    path = tmp / "spec.json"
    path.write_text(json.dumps({"preset": "tiny-ti2v", "prompt": PROMPT, "seed": "abc", "num_frames": 9.5}))
    return {"spec": path}


# --- the catalog ----------------------------------------------------------------------------------------------
def api(**spec) -> dict:
    return {"spec": {"preset": "tiny-ti2v", "prompt": PROMPT, "seed": 1, **spec}}


def render_nb(**params) -> dict:
    base = {"lock_name": "hero", "final_preset": "tiny-t2v-a14b", "transfer_mode": "fresh"}
    return {"notebook": RENDER_NB, "parameters": {**base, **params}}


def explore_nb(**params) -> dict:
    return {"notebook": EXPLORE_NB, "parameters": {"preset": "tiny-ti2v", **params}}


TOKENS_600 = " ".join(["circle"] * 600)  # the tiny tokenizer is word-level: 601 tokens with </s>
SEED_RANGE = f"0 to {MAX_SEED}"

CASES = [
    # Python API: RenderSpec and wanflow.render
    Case("api-height-not-multiple", "api", api(height=70), "height", "must be a multiple of 32 on tiny-ti2v"),
    Case("api-width-too-large", "api", api(width=5000), "width", "allowed 16..4096"),
    Case("api-a14b-width-not-16", "api", api(preset="tiny-t2v-a14b", width=72), "width", "multiple of 16"),
    Case("api-frames-not-4k+1", "api", api(num_frames=10), "num_frames", "must be 4k+1 (e.g. 9 or 13)"),
    Case("api-frames-zero", "api", api(num_frames=0), "num_frames", "allowed 1..1025"),
    Case("api-frames-float", "api", api(num_frames=9.5), "num_frames", "9.5 is not an integer; allowed 4k+1"),
    Case("api-seed-negative", "api", api(seed=-1), "seed", SEED_RANGE),
    Case("api-seed-2^32", "api", api(seed=2**32), "seed", SEED_RANGE),
    Case("api-seed-float", "api", api(seed=1.5), "seed", f"1.5 is not an integer; use an integer from {SEED_RANGE}"),
    Case("api-seed-text", "api", api(seed="abc"), "seed", "'abc' is not an integer"),
    Case("api-seed-bool", "api", api(seed=True), "seed", "True is not an integer"),
    Case("api-prompt-empty", "api", api(prompt=""), "prompt", "describe what the video shows"),
    Case("api-prompt-whitespace", "api", api(prompt=" \n\t "), "prompt", "must not be empty or only whitespace"),
    Case("api-prompt-none", "api", api(prompt=None), "prompt", "None is not text; give the prompt as a string"),
    Case("api-prompt-too-long", "api", api(prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt",
         f"allowed at most {MAX_PROMPT_CHARS}"),
    Case("api-prompt-nul", "api", api(prompt="a red\x00circle"), "prompt", "control character U+0000"),
    Case("api-guidance-2-one-expert", "api", api(guidance_scale_2=3.0), "guidance_scale_2",
         "only for two-expert presets"),
    Case("api-guidance-text", "api", api(guidance_scale="high"), "guidance_scale", "is not a number; allowed 0.0..50.0"),
    Case("api-unknown-field", "api", api(sead=3), "sead", "not a spec field; allowed fields: version, preset"),
    Case("api-unknown-preset", "api", api(preset="wan-9000"), "preset", "choose one of: ti2v-5b"),
    Case("api-i2v-without-image", "api", api(preset="tiny-i2v-a14b"), "image", "image-to-video only: give an input image"),
    Case("api-image-missing", "api", api(preset="tiny-i2v-a14b", image="/no/such/frame.png"), "image", "does not exist"),
    Case("api-image-empty-path", "api", api(preset="tiny-i2v-a14b", image=""), "image",
         "give the path of a PNG, JPEG or WebP image"),
    Case("api-image-folder", "api", api(preset="tiny-i2v-a14b", image=P("image")), "image", "is not a file",
         setup=image_folder),
    Case("api-image-not-an-image", "api", api(preset="tiny-i2v-a14b", image=P("image")), "image",
         "use PNG, JPEG or WebP", setup=text_as_png),
    Case("api-image-unreadable", "api", api(preset="tiny-i2v-a14b", image=P("image")), "image",
         "not readable (permission denied)", setup=unreadable_png),
    Case("api-image-16-bit", "api", api(preset="tiny-i2v-a14b", image=P("image")), "image",
         "use an 8-bit RGB, RGBA, grayscale or palette image", setup=sixteen_bit_png),
    Case("api-image-on-t2v-preset", "api", api(preset="tiny-t2v-a14b", image=P("image")), "image",
         "text-to-video only", setup=rgb_png),
    Case("api-model-dir-missing", "api", {**api(), "options": {"model_dir": "/no/such/model"}}, "model_dir",
         "does not exist or is not a folder", error=ModelNotFoundError),
    Case("api-model-dir-no-weights", "api", {**api(), "options": {"model_dir": P("model")}}, "model_dir",
         "no weights file (*.safetensors or *.bin)", error=ModelNotFoundError, setup=model_without_weights),
    Case("api-safetensors-garbled-header", "api", {**api(), "options": {"model_dir": P("model")}}, "model_dir",
         "corrupt header", error=ModelLoadError, setup=garbled_header_model, also=(WEIGHTS, "download it again")),
    Case("api-real-preset-without-weights", "api", api(preset="ti2v-5b", width=1280, height=704, num_frames=121),
         "preset", "hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers", error=ModelNotFoundError),
    Case("api-device-unknown", "api", {**api(), "options": {"device": "quantum"}}, "device",
         "use auto, cpu, cuda, cuda:N or mps"),
    Case("api-out-dir-unwritable", "api", {**api(), "out": P("file") / "x"}, "out_dir",
         "choose another --out folder", error=PermissionError, setup=a_file),
    Case("api-tracking-server-down", "api", {**api(), "tracking_uri": DEAD_SERVER}, "tracking_uri",
         "start one with `mlflow server", error=TrackingError),
    Case("api-tracking-file-store", "api", {**api(), "tracking_uri": "file:///tmp/mlruns"}, "tracking_uri",
         "use a SQLite store", error=TrackingError),
    Case("api-disk-full-ffmpeg", "api", api(), "out_dir", "the disk is full: cannot write video.mp4",
         before_load=False, error=DiskFullError, setup=disk_full_in_ffmpeg, run_status="FAILED"),
    Case("api-prompt-past-512-tokens", "api", api(prompt=TOKENS_600), "prompt", "reads the first 512",
         before_load=False, error=None, warns=True, run_status="FINISHED"),
    Case("api-safetensors-bad-dtype", "api", {**api(), "options": {"model_dir": P("model")}}, "model_dir",
         "Download the file(s) again", before_load=False, error=ModelLoadError, setup=garbled_dtype_model,
         run_status="FAILED", also=(WEIGHTS,)),
    # CLI: wanflow render / replay / lock, in-process and as `python -m wanflow.cli`
    Case("cli-height-not-multiple", "cli", {"argv": ["render", PROMPT, "--height", "70"]}, "height",
         "multiple of 32"),
    Case("cli-frames-not-4k+1", "cli", {"argv": ["render", PROMPT, "--frames", "12"]}, "num_frames", "4k+1"),
    Case("cli-seed-text", "cli", {"argv": ["render", PROMPT, "--seed", "abc"]}, "seed",
         f"use an integer from {SEED_RANGE}"),
    Case("cli-seed-too-large", "cli", {"argv": ["render", PROMPT, "--seed", str(2**40)]}, "seed", SEED_RANGE),
    Case("cli-guidance-2-one-expert", "cli", {"argv": ["render", PROMPT, "--guidance-2", "3"]}, "guidance_scale_2",
         "use guidance_scale"),
    Case("cli-guidance-not-a-number", "cli", {"argv": ["render", PROMPT, "--guidance", "lots"]}, "guidance_scale",
         "is not a number; allowed 0.0..50.0"),
    Case("cli-empty-prompt", "cli", {"argv": ["render", "   "]}, "prompt", "must not be empty"),
    Case("cli-unknown-preset", "cli", {"argv": ["render", PROMPT, "--model", "wan-9000"]}, "preset",
         "choose one of"),
    Case("cli-image-not-an-image", "cli", {"argv": ["render", PROMPT, "--model", "tiny-i2v-a14b", "--image",
                                                    P("image")]}, "image", "use PNG, JPEG or WebP",
         setup=text_as_png),
    Case("cli-spec-file-wrong-types", "cli", {"argv": ["render", "--spec", P("spec")]}, "seed",
         "'abc' is not an integer", setup=bad_spec_file, also=("num_frames: 9.5 is not an integer",)),
    Case("cli-model-dir-incomplete", "cli", {"argv": ["render", PROMPT, "--model-dir", P("model")]}, "model_dir",
         "missing component folder(s) transformer", setup=model_without_transformer),
    Case("cli-safetensors-truncated", "cli", {"argv": ["render", PROMPT, "--model-dir", P("model")]}, "model_dir",
         "is truncated", setup=truncated_model, also=(WEIGHTS, "download it again")),
    Case("cli-out-dir-unwritable", "cli", {"argv": ["render", PROMPT, "--out", P("file") / "x"]}, "out_dir",
         "Not a directory", setup=a_file),
    Case("cli-tracking-server-down", "cli", {"argv": ["render", PROMPT, "--tracking-uri", DEAD_SERVER]},
         "tracking_uri", "no MLflow server answers"),
    Case("cli-lock-name-path", "cli", {"argv": ["lock", "0" * 32, "--name", "../../etc"]}, "name",
         "use 1-64 letters, digits"),
    Case("cli-replay-frames", "cli", {"argv": ["replay", "--locks", "hero", "--model", "tiny-t2v-a14b", "--frames",
                                               "10"]}, "num_frames", "must be 4k+1"),
    Case("cli-replay-strength-text", "cli", {"argv": ["replay", "--mode", "draft-v2v", "--strength", "half"]},
         "strength", "allowed 0 < strength <= 1"),
    Case("cli-replay-strength-no-locks", "cli", {"argv": ["replay", "--mode", "draft-v2v", "--strength", "2"]},
         "strength", "2.0 is out of range; allowed 0 < strength <= 1"),  # checked before the store is read
    Case("cli-replay-strength-other-mode", "cli", {"argv": ["replay", "--mode", "fresh", "--strength", "0.3"]},
         "--strength", "only for --mode draft-v2v; this replay is --mode fresh"),
    Case("cli-replay-frame-other-mode", "cli", {"argv": ["replay", "--mode", "draft-v2v", "--frame", "4"]},
         "--frame", "only for --mode first-frame; this replay is --mode draft-v2v"),
    Case("cli-disk-full-gif", "cli", {"argv": ["render", PROMPT, "--seed", "2"]}, "out_dir",
         "the disk is full: cannot write preview.gif", before_load=False, setup=disk_full_in_gif, run_status="FAILED"),
    Case("cli-subprocess-height", "cli", {"argv": ["render", PROMPT, "--height", "70"], "subprocess": True},
         "height", "multiple of 32"),
    Case("cli-subprocess-seed-text", "cli", {"argv": ["render", PROMPT, "--seed", "1.5"], "subprocess": True},
         "seed", "is not an integer"),
    # papermill: the notebooks' parameters (cells run after papermill's injection), and the replay
    Case("pm-render-seed-text", "papermill", render_nb(seed="abc"), "seed", "use an integer 0..", error=TransferError),
    Case("pm-render-frames-float", "papermill", render_nb(num_frames=9.5), "num_frames", "is not an integer",
         error=TransferError),
    Case("pm-render-lock-none", "papermill", render_nb(lock_name=None), "lock_name", "give a lock name",
         error=TransferError),
    Case("pm-render-preset-none", "papermill", render_nb(final_preset=None), "final_preset", "give a preset name",
         error=TransferError),
    Case("pm-render-strength-text", "papermill", render_nb(transfer_mode="draft-v2v", strength="half"), "strength",
         "allowed 0 < strength <= 1", error=TransferError),
    Case("pm-render-steps-bool", "papermill", render_nb(steps=True), "steps", "use an integer 1..1000",
         error=TransferError),
    Case("pm-render-tracking-none", "papermill", render_nb(tracking_uri=None), "tracking_uri",
         "give an MLflow store URI", error=TransferError),
    Case("pm-render-width-not-multiple", "papermill", render_nb(width=70), "width", "must be a multiple of 16",
         error=TransferError),
    Case("pm-render-mode-unknown", "papermill", render_nb(transfer_mode="sideways"), "transfer_mode",
         "is not one of fresh, first-frame, draft-v2v", error=TransferError),
    Case("pm-explore-prompt-none", "papermill", explore_nb(headless_prompt=None), "headless_prompt",
         "give a prompt, or \"\" for no headless render"),
    Case("pm-explore-seed-text", "papermill", explore_nb(headless_prompt=PROMPT, headless_seed="abc"),
         "headless_seed", f"use an integer from {SEED_RANGE}"),
    Case("pm-explore-preset-unknown", "papermill", explore_nb(preset="wan-9000"), "preset", "choose one of"),
    Case("pm-kernel-render-seed-text", "papermill", {**render_nb(seed="abc"), "kernel": True}, "seed",
         "is not an integer", error=TransferError),
    Case("replay-seed-text", "papermill", {"replay": {"seed": "abc"}}, "seed", "or -1 for a new one",
         error=TransferError),
    Case("replay-v2v-on-i2v", "papermill", {"replay": {"mode": "draft-v2v", "final_preset": "tiny-i2v-a14b"}},
         "final_preset", "cannot run draft-v2v", error=TransferError),
    Case("replay-unknown-lock", "papermill", {"replay": {"locks": ["ghost"]}}, "name", "see `wanflow locks`",
         error=LockError),
    # studio: widgets set to bad values, Generate clicked (and explore.do_generate)
    Case("studio-width-not-multiple", "studio", {"width": 70}, "width", "multiple of 32"),
    Case("studio-empty-prompt", "studio", {"prompt": ""}, "prompt", "must not be empty"),
    Case("studio-frames-not-4k+1", "studio", {"num_frames": 10}, "num_frames", "must be 4k+1"),
    Case("studio-seed-negative", "studio", {"seed": -5, "seed_mode": "keep"}, "seed", SEED_RANGE),
    Case("studio-steps-zero", "studio", {"num_inference_steps": 0}, "num_inference_steps", "allowed 1..1000"),
    Case("studio-prompt-control-char", "studio", {"prompt": "a red\x07circle"}, "prompt",
         "allowed: printable text, tabs and newlines"),
    Case("studio-guidance-2-too-high", "studio", {"preset": "tiny-t2v-a14b", "guidance_scale_2": 99.0},
         "guidance_scale_2", "allowed 0.0..50.0"),
    Case("studio-tracking-server-down", "studio", {"tracking_uri": DEAD_SERVER}, "tracking_uri",
         "no MLflow server answers"),
    Case("explore-fps-zero", "studio", {"explore": True, "fps": 0}, "fps", "allowed 1..120"),
]


# --- running one case -----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What an entry point did: the exception (api, papermill), the exit status and stderr (cli), the message
    shown (studio), the warnings, and which notebook cell raised (papermill: 0 = the first after the parameters)."""

    error: BaseException | None = None
    message: str = ""
    code: int | None = None
    stderr: str = ""
    caught: list = field(default_factory=list)
    cell: int | None = None


def _resolve(value: Any, places: dict[str, Path]) -> Any:
    """``value`` with every :class:`P` replaced by its path (as a string inside argv lists)."""
    if isinstance(value, P):
        return places[value.name] / value.rest if value.rest else places[value.name]
    if isinstance(value, dict):
        return {k: _resolve(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [str(_resolve(v, places)) for v in value]
    return value


def run_api(given: dict, store: str, out: Path) -> Outcome:
    from wanflow.loading import LoadOptions
    from wanflow.spec import RenderSpec

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            spec = RenderSpec(**given["spec"])
            wanflow.render(spec, options=LoadOptions(**given.get("options", {})), out_dir=given.get("out", out),
                           tracking_uri=given.get("tracking_uri", store), progress=False)
        except Exception as err:  # noqa: BLE001 - the table says which type
            return Outcome(error=err, message=explain(err), caught=list(caught))
    return Outcome(caught=list(caught), message="\n".join(str(w.message) for w in caught))


def run_cli(given: dict, store: str, out: Path, capsys) -> Outcome:
    argv = list(given["argv"])
    command = argv[0]
    if command in ("render", "replay", "lock") and "--tracking-uri" not in argv:
        argv += ["--tracking-uri", store]
    if command in ("render", "replay") and "--out" not in argv:
        argv += ["--out", str(out)]
    if command == "render":
        argv.append("--quiet")
    if given.get("subprocess"):
        done = subprocess.run([sys.executable, "-m", "wanflow.cli", *argv], capture_output=True, text=True,
                              timeout=120)
        return Outcome(code=done.returncode, stderr=done.stderr, message=done.stderr)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    return Outcome(code=code, stderr=err, message=err)


def notebook_cells(notebook: Path, parameters: dict) -> tuple[list, int]:
    """The notebook's code cells after papermill's own parameter injection, and the index of the injected cell."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(notebook)), parameters)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    return cells, injected


def run_papermill(given: dict, store: str, out: Path, tmp: Path) -> Outcome:
    if "replay" in given:
        from wanflow.replay import replay

        options = {"final_preset": "tiny-t2v-a14b", **given["replay"]}
        locks = options.pop("locks", ["hero"])
        try:
            replay(locks, tracking_uri=store, out_dir=out, report=lambda line: None, **options)
        except Exception as err:  # noqa: BLE001
            return Outcome(error=err, message=explain(err))
        return Outcome()
    parameters = {"tracking_uri": store, "output_dir": str(out), **given["parameters"]}
    cells, injected = notebook_cells(given["notebook"], parameters)
    if given.get("kernel"):
        from papermill.exceptions import PapermillExecutionError

        from wanflow.replay import execute

        executed = tmp / "executed.ipynb"
        try:
            execute(given["notebook"], executed, parameters)
        except PapermillExecutionError as err:
            ran = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
            failed = next(i for i, c in enumerate(ran) if any(o.get("output_type") == "error" for o in c.outputs))
            error = {"TransferError": TransferError}.get(err.ename, RuntimeError)(err.evalue)
            return Outcome(error=error, message=err.evalue, cell=failed - injected - 1)
        return Outcome()
    namespace: dict = {}
    for index, cell in enumerate(cells):
        try:
            exec(compile(cell.source, f"<{given['notebook'].name} cell {index}>", "exec"), namespace)  # noqa: S102
        except Exception as err:  # noqa: BLE001
            return Outcome(error=err, message=explain(err), cell=index - injected - 1)
    return Outcome()


def run_studio(given: dict, store: str, out: Path) -> Outcome:
    import dataclasses

    from wanflow.explore import StudioState, do_generate

    given = dict(given)
    preset = given.pop("preset", "tiny-ti2v")
    uri = given.pop("tracking_uri", store)
    if given.pop("explore", False):
        state = dataclasses.replace(StudioState.from_preset(preset, prompt=PROMPT, seed=1), **given)
        try:
            do_generate(state, tracking_uri=uri, output_dir=out)
        except Exception as err:  # noqa: BLE001
            return Outcome(error=err, message=explain(err))
        return Outcome()
    from wanflow.studio import Studio

    studio = Studio(preset=preset, tracking_uri=uri, output_dir=out)
    studio.prompt.value = PROMPT
    for name, value in given.items():
        getattr(studio, name).value = value
    studio.generate_button.click()
    assert studio.last is None and studio.current_run_id is None, "the studio rendered bad input"
    assert studio.video.value == b"" and "rendering" not in studio.status.value
    shown = re.sub(r"<[^>]+>", "", studio.errors.value.replace("</div>", "\n"))  # one line per problem
    return Outcome(message=html.unescape(shown))


# --- checks ---------------------------------------------------------------------------------------------------
def runs_in(db: Path) -> list[tuple[str, str]]:
    """``(status, error tag)`` of every run in a SQLite store, read with sqlite3 (no MLflow, no migrations)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("select r.status, coalesce(t.value, '') from runs r left join tags t "
                           "on t.run_uuid = r.run_uuid and t.key = 'error'").fetchall()


def tag_values(db: Path, key: str) -> list[str]:
    """The values of tag ``key`` over every run in a SQLite store."""
    with sqlite3.connect(db) as con:
        return [value for (value,) in con.execute("select value from tags where key = ?", (key,))]


def leftovers(folder: Path) -> list[Path]:
    """Files that look like a finished render, or temporaries left behind."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name == "video.mp4" or ".partial" in p.name
            or p.name.startswith(".write-test")]


@pytest.fixture
def counted(monkeypatch):
    """Counts of model loads: ``generate`` calls and ``DiffusionPipeline.from_pretrained`` calls."""
    from diffusers import DiffusionPipeline

    import wanflow.rendering as rendering

    calls = {"generate": 0, "from_pretrained": 0}
    real_generate = rendering.generate
    real_from_pretrained = DiffusionPipeline.from_pretrained.__func__

    def generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    def from_pretrained(cls, *args, **kwargs):
        calls["from_pretrained"] += 1
        return real_from_pretrained(cls, *args, **kwargs)

    monkeypatch.setattr(rendering, "generate", generate)
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(from_pretrained))
    return calls


ENTRIES = {"api", "cli", "papermill", "studio"}


def test_catalog_covers_every_entry_point():
    counts = {entry: sum(c.entry == entry for c in CASES) for entry in ENTRIES}
    assert len(CASES) >= 40 and all(n >= 8 for n in counts.values()), counts
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys, fresh_store, counted):
    store = fresh_store
    db = Path(store.removeprefix("sqlite:///"))
    out = tmp_path / "out"
    places = case.setup(tmp_path, monkeypatch) if case.setup else {}
    given = _resolve(case.input, places)

    if case.entry == "api":
        outcome = run_api(given, store, out)
    elif case.entry == "cli":
        outcome = run_cli(given, store, out, capsys)
    elif case.entry == "papermill":
        outcome = run_papermill(given, store, out, tmp_path)
    else:
        outcome = run_studio(given, store, out)

    message = outcome.message
    # the error: its type (or exit status 2 without a traceback), the field and what is allowed
    if case.entry == "cli":
        assert outcome.code == 2, message
        assert "Traceback" not in outcome.stderr, outcome.stderr
    elif case.warns:
        assert outcome.error is None, outcome.error
        assert any(issubclass(w.category, UserWarning) for w in outcome.caught)
    elif case.entry == "studio" and not case.input.get("explore"):
        assert outcome.error is None  # shown next to the controls, not raised
    elif case.error is not None:
        assert isinstance(outcome.error, case.error), repr(outcome.error)
    assert re.search(rf"(^|[\s:]){re.escape(case.field)}:", message, re.MULTILINE), message
    assert case.allowed in message, message
    for fragment in case.also:
        assert fragment in message, message
    if "notebook" in case.input:  # wrong parameters fail the first cell after papermill's injected one
        assert outcome.cell == 0, f"failed in cell {outcome.cell} after the parameters, not the first"

    # the store: nothing RUNNING; no run at all when the input alone decides
    runs = runs_in(db)
    assert not [status for status, _ in runs if status == "RUNNING"], runs
    if case.before_load:
        assert runs == [], runs
        assert counted == {"generate": 0, "from_pretrained": 0}, counted
    else:
        assert [status for status, _ in runs] == [case.run_status], runs
        if case.run_status == "FAILED":
            (_, error_tag), = runs
            assert case.allowed in error_tag and case.field in error_tag, error_tag

    # the output folder: nothing that looks finished, no temporaries
    left = leftovers(tmp_path)  # the output folder and the store's artifacts
    if case.warns:  # the render finished: its video, and the run's copy
        assert sorted(left) == sorted([out / "video.mp4", *db.parent.glob("artifacts/*/artifacts/video.mp4")]), left
        assert tag_values(db, "prompt_truncated") == ["true"]
    else:
        assert left == [], left
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_the_checks_would_catch_a_leftover_and_a_running_run(tmp_path, fresh_store):
    """The catalog's own checks fail on what they guard against: a RUNNING run and a temporary or finished file."""
    from mlflow.tracking import MlflowClient

    db = Path(fresh_store.removeprefix("sqlite:///"))
    client = MlflowClient(fresh_store)
    client.create_run(client.create_experiment("x"))
    assert [status for status, _ in runs_in(db)] == ["RUNNING"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".video.abcd.partial.mp4").write_bytes(b"")
    (tmp_path / "out" / "video.mp4").write_bytes(b"")
    assert sorted(p.name for p in leftovers(tmp_path)) == [".video.abcd.partial.mp4", "video.mp4"]
