"""``wanflow``: the command line over the library (argv in, library calls out; no logic of its own).

    wanflow models                        the presets and their official settings
    wanflow render PROMPT [--model NAME]  render one video, log one MLflow run
    wanflow history                       past renders as a table
    wanflow lock RUN_ID --name NAME       lock a draft; `wanflow unlock NAME`, `wanflow locks`
    wanflow replay [--locks NAMES]        render locks on the final model through notebooks/02_render.ipynb
    wanflow compare LOCK_OR_RUN_IDS       a draft and its finals side by side (tables, keyframe grid, UI link)
    wanflow ui                            the MLflow UI for the project's store, on 127.0.0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_BAD_INPUT = 2


def _models(args: argparse.Namespace) -> int:
    import pandas as pd

    from wanflow.presets import DEFAULT_PRESET, PRESETS

    rows = [p.summary() for p in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = pd.DataFrame(rows).drop(columns=["source"])
    print(table.to_string(index=False))
    print(f"\ndefault: {DEFAULT_PRESET}. Real presets load from --model-dir, $WANFLOW_MODEL_DIR/<repo> or the "
          "Hugging Face cache:")
    for preset in PRESETS.values():
        if preset.hub_id:
            print(f"  {preset.name:10s} {preset.hub_id}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _integer(field: str, allowed: str):
    """An argparse ``type`` for an integer option whose error names the spec field and what is allowed
    (``argument --seed: seed: 'abc' is not an integer; use an integer from 0 to 4294967295``)."""
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: {text!r} is not an integer; {allowed}") from None

    return parse


def _number(field: str, allowed: str):
    """An argparse ``type`` for a number option, with the same kind of message as :func:`_integer`."""
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: {text!r} is not a number; {allowed}") from None

    return parse


def _port(text: str) -> int:
    value = int(text) if text.strip().isdigit() else None
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port: {text!r} is not a TCP port; use an integer 1..65535")
    return value


def _read_spec(path: str) -> dict:
    """The fields of a saved spec.json, or ValueError naming the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            fields = json.load(handle)
    except IsADirectoryError:
        raise ValueError(f"spec: {path} is a folder; give the spec.json file inside a render's folder") from None
    except FileNotFoundError:
        raise ValueError(f"spec: {path} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"spec: {path} is not UTF-8 text; give a spec.json written by wanflow") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"spec: {path} is not valid JSON ({err})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"spec: {path} holds a JSON {type(fields).__name__}, not an object of spec fields")
    return fields


def _render(args: argparse.Namespace) -> int:
    from wanflow.presets import DEFAULT_PRESET
    from wanflow.spec import RenderSpec

    overrides = {
        "preset": args.model, "prompt": args.prompt, "negative_prompt": args.negative, "seed": args.seed,
        "num_inference_steps": args.steps, "guidance_scale": args.guidance, "guidance_scale_2": args.guidance_2,
        "flow_shift": args.flow_shift, "width": args.width, "height": args.height, "num_frames": args.frames,
        "fps": args.fps, "image": args.image, "approximations": args.approximate,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    if args.spec:
        fields = _read_spec(args.spec)
        fields.update(given)
        if "image" in given:
            fields.pop("image_sha256", None)
    else:
        if args.prompt is None:
            raise ValueError("prompt: give a PROMPT, or --spec FILE to re-render a saved spec.json")
        fields = {"preset": DEFAULT_PRESET, **given}
    spec = RenderSpec.model_validate(fields)  # validated before torch and diffusers are even imported
    from wanflow.loading import LoadOptions
    from wanflow.rendering import render

    if args.quiet:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    options = LoadOptions(
        device=args.device, dtype="bfloat16" if args.convert_model_dtype else args.dtype,
        offload_model=args.offload_model, t5_cpu=args.t5_cpu, group_offload=args.group_offload,
        vae_tiling=args.vae_tiling, fast={"auto": None, "on": True, "off": False}[args.fast],
        auto_memory=not args.no_auto_memory, model_dir=args.model_dir,
    )
    result = render(spec, options=options, out_dir=args.out, tracking_uri=args.tracking_uri,
                    log=not args.no_log, progress=not args.quiet and sys.stderr.isatty())
    if args.json:
        print(json.dumps({"run_id": result.run_id, "video": str(result.video.resolve()), "seed": result.seed,
                          "spec_id": spec.spec_id, "timings": result.timings,
                          "frames_match": result.frames_match, "earlier_run_id": result.earlier_run_id}, indent=2))
    else:
        total = sum(result.timings.values())
        print(f"run_id: {result.run_id or '(not logged)'}")
        print(f"video:  {result.video}")
        print(f"seed:   {result.seed}   spec_id: {spec.spec_id}   {spec.num_frames} frames "
              f"{spec.width}x{spec.height} @ {spec.fps} fps   {total:.1f} s")
        if result.memory_plan.startswith("auto"):
            print(f"memory: {result.memory_plan} (choose yourself with --offload-model, --t5-cpu, --group-offload, "
                  "--vae-tiling)")
        if result.frames_match is not None:
            verdict = "bit-identical to" if result.frames_match else "DIFFERENT from"
            print(f"re-render: frames {verdict} run {result.earlier_run_id} (same spec, device, dtype)")
    return 0


def _history(args: argparse.Namespace) -> int:
    from wanflow.tracking import end_orphaned_runs, history

    end_orphaned_runs(args.tracking_uri, ended_by="wanflow history")  # a killed render's run shows KILLED, not RUNNING
    frame = history(args.tracking_uri, max_results=args.limit, stage=args.stage)
    if args.json:
        print(frame.to_json(orient="records", date_format="iso", indent=2))
        return 0
    if frame.empty and args.stage == "final":
        print("no finals yet: lock a draft (`wanflow lock RUN_ID --name NAME`), then `wanflow replay`")
        return 0
    if frame.empty:
        print("no renders yet: try `wanflow render \"a red circle moving left on a blue background\"`")
        return 0
    columns = [c for c in ("run_id", "status", "stage", "preset", "seed", "num_inference_steps", "width", "height",
                           "num_frames", "approximations", "total_s", "denoise_s", "adherence", "prompt") if c in frame]
    view = frame[columns].copy()
    if "prompt" in view:
        view["prompt"] = view["prompt"].str.replace("\n", " ").str.slice(0, 50)
    print(view.to_string(index=False))
    return 0


def _lock(args: argparse.Namespace) -> int:
    from wanflow.locks import lock

    held = lock(args.run_id, args.name, args.tracking_uri, force=args.force)
    print(f"locked {held.run_id} as {held.name!r}: {held.spec.preset}, seed {held.spec.seed}, "
          f"{held.spec.prompt[:60]!r}")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    from wanflow.locks import unlock

    print(f"unlocked {args.name!r} (run {unlock(args.name, args.tracking_uri)})")
    return 0


def _locks(args: argparse.Namespace) -> int:
    from wanflow.locks import list_locks

    table = list_locks(args.tracking_uri)
    if args.json:
        print(table.to_json(orient="records", indent=2))
    elif table.empty:
        print("no locks yet: `wanflow lock RUN_ID --name NAME` locks a draft (run ids: `wanflow history`)")
    else:
        view = table.drop(columns=["artifact_uri"])
        view["prompt"] = view["prompt"].str.replace("\n", " ").str.slice(0, 50)
        print(view.to_string(index=False))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from wanflow.compare import compare

    result = compare(args.targets, args.tracking_uri, args.out, ui_base=args.ui)
    if args.json:
        print(json.dumps({
            "runs": [{"run_id": r.run_id, "label": r.label, "stage": r.stage, "status": r.status} for r in result.runs],
            "settings": json.loads(result.settings.to_json(orient="index")),
            "metrics": json.loads(result.metrics.to_json(orient="index")),
            "grid": str(result.grid) if result.grid else None,
            "previews": {label: str(path) for label, path in result.previews.items()},
            "ui_url": result.ui_url,
        }, indent=2, ensure_ascii=False))
        return 0
    import pandas as pd

    with pd.option_context("display.max_colwidth", 40, "display.width", 200):
        print(f"{len(result.runs)} run(s)\n\nsettings that differ:\n{result.settings.to_string()}")
        if not result.metrics.empty:
            print(f"\nmetrics:\n{result.metrics.round(3).to_string()}")
    print(f"\nkeyframes: {result.grid or '(no contact sheets)'}")
    print(f"MLflow UI (`wanflow ui`): {result.ui_url}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from wanflow.replay import replay
    from wanflow.transfer import DEFAULT_STRENGTH

    # an option of another mode would be ignored: say so instead of rendering something other than what was asked
    for flag, value, mode in (("--strength", args.strength, "draft-v2v"), ("--frame", args.frame, "first-frame")):
        if value is not None and args.mode != mode:
            raise ValueError(f"{flag}: only for --mode {mode}; this replay is --mode {args.mode} (drop {flag})")
    names = [n for item in args.locks for n in item.split(",") if n] if args.locks else None
    summary = replay(
        names, final_preset=args.model, mode=args.mode,
        strength=DEFAULT_STRENGTH if args.strength is None else args.strength,
        frame_index=0 if args.frame is None else args.frame,
        seed=args.seed, steps=args.steps, width=args.width, height=args.height, num_frames=args.frames,
        force=args.force, tracking_uri=args.tracking_uri, out_dir=args.out, notebook=args.notebook,
        device=args.device, dtype=args.dtype,
    )
    return summary.exit_code


def _ui(args: argparse.Namespace) -> int:
    from wanflow.tracking import client_and_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    _, experiment_id = client_and_experiment(uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI for {uri}\n  http://{args.host}:{args.port}/#/experiments/{experiment_id}"
          "?workflowType=machine_learning\n(Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read your runs",
              file=sys.stderr)
    os.execv(sys.executable, command)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wanflow",
        description="Wan2.2 video renders, tracked in MLflow. Start with `wanflow render \"a red circle moving left "
                    "on a blue background\"`, then `wanflow history` and `wanflow ui`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from wanflow.spec import LIMITS, MAX_SEED  # no torch: cheap

    def limits(field: str) -> str:
        return "allowed {}..{}".format(*LIMITS[field])

    seed = _integer("seed", f"use an integer from 0 to {MAX_SEED}")
    steps = _integer("num_inference_steps", limits("num_inference_steps"))
    width, height = _integer("width", limits("width")), _integer("height", limits("height"))
    frames = _integer("num_frames", f"4k+1 in {LIMITS['num_frames'][0]}..{LIMITS['num_frames'][1]}")

    models = sub.add_parser("models", help="list model presets and their official settings")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=_models)

    r = sub.add_parser("render", help="render one video and log it as an MLflow run",
                       description="Render one video. Settings you leave out come from the preset's official "
                                   "values (`wanflow models`).")
    r.add_argument("prompt", nargs="?", help="what the video shows")
    r.add_argument("--model", help="preset name (default: the embedded model; see `wanflow models`)")
    r.add_argument("--spec", metavar="FILE", help="re-render a saved spec.json (other options override its fields)")
    r.add_argument("--seed", type=seed, help="noise seed 0..4294967295 (default: random, printed and logged)")
    r.add_argument("--steps", type=steps, help="num_inference_steps")
    r.add_argument("--guidance", type=_number("guidance_scale", limits("guidance_scale")),
                   help="guidance_scale (high-noise expert on two-expert models)")
    r.add_argument("--guidance-2", type=_number("guidance_scale_2", limits("guidance_scale_2")),
                   help="guidance_scale_2 (low-noise expert; two-expert models only)")
    r.add_argument("--flow-shift", type=_number("flow_shift", limits("flow_shift")),
                   help="scheduler flow_shift (sample shift)")
    r.add_argument("--width", type=width, help="width in pixels")
    r.add_argument("--height", type=height, help="height in pixels")
    r.add_argument("--frames", type=frames, help="num_frames, 4k+1")
    r.add_argument("--fps", type=_integer("fps", limits("fps")), help="frames per second of the mp4")
    r.add_argument("--negative", help="negative_prompt (default: the preset's)")
    r.add_argument("--image", help="first frame for image-to-video (PNG/JPEG/WebP)")
    r.add_argument("--out", metavar="DIR", help="output folder (default: outputs/<time>-<preset>-<spec id>)")
    r.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    r.add_argument("--no-log", action="store_true", help="write files only, no MLflow run")
    r.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: bfloat16 on GPU, float32 on CPU)")
    r.add_argument("--convert-model-dtype", action="store_true", help="as Wan2.2's flag: same as --dtype bfloat16")
    r.add_argument("--offload-model", action="store_true", help="as Wan2.2's flag: model CPU offload, less GPU memory")
    r.add_argument("--t5-cpu", action="store_true", help="as Wan2.2's flag: text encoder on the CPU")
    r.add_argument("--group-offload", action="store_true",
                   help="stream the experts' blocks to the GPU (least GPU memory; not with --offload-model)")
    r.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles (lower decode memory)")
    r.add_argument("--no-auto-memory", action="store_true",
                   help="keep everything on the GPU (default: with no memory flag, real models on a GPU get the "
                        "fastest memory mode that fits the card, printed and tagged memory_plan)")
    r.add_argument("--fast", choices=["auto", "on", "off"], default="auto",
                   help="exact fast path: fastest attention kernel, compiled blocks, channels-last VAE "
                        "(auto: real models on CUDA; on: needs CUDA)")
    r.add_argument("--approximate", metavar="NAMES",
                   help="opt-in speed-ups that change the frames, comma-separated: first-block-cache, taylorseer, fp8, "
                        "sage-attention (the last two need a CUDA GPU; part of the spec)")
    r.add_argument("--model-dir", help="local Diffusers-layout folder with the preset's weights")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)

    h = sub.add_parser("history", help="past renders as a table")
    h.add_argument("--limit", type=_positive, default=50, help="newest N runs (default 50)")
    h.add_argument("--stage", choices=["draft", "final"], help="only drafts or finals")
    h.add_argument("--json", action="store_true", help="all columns as JSON records")
    h.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    h.set_defaults(func=_history)

    lk = sub.add_parser("lock", help="lock a draft for final rendering")
    lk.add_argument("run_id", help="the draft's MLflow run id (see `wanflow history`)")
    lk.add_argument("--name", required=True, help="lock name: letters, digits, '_', '.', '-' (max 64)")
    lk.add_argument("--force", action="store_true", help="move the name if another run holds it")
    lk.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    lk.set_defaults(func=_lock)

    ul = sub.add_parser("unlock", help="remove a lock")
    ul.add_argument("name")
    ul.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    ul.set_defaults(func=_unlock)

    ls = sub.add_parser("locks", help="list locks")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    ls.set_defaults(func=_locks)

    cp = sub.add_parser("compare", help="a draft and its finals side by side",
                        description="Compare renders: a lock name gives its draft and every finished final made "
                                    "from it; run ids give those runs. Without arguments: the newest lock.")
    cp.add_argument("targets", nargs="*", metavar="LOCK_OR_RUN_ID", help="lock names and/or MLflow run ids")
    cp.add_argument("--out", metavar="DIR", help="folder for keyframes.png (default: outputs/compare-<time>)")
    cp.add_argument("--ui", default="http://127.0.0.1:5000", help="MLflow UI address for the Compare link")
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    cp.set_defaults(func=_compare)

    from wanflow.presets import PRESETS  # no torch: cheap

    rp = sub.add_parser("replay", help="render locks on the final model (papermill runs of 02_render.ipynb)",
                        description="Render each lock on the final model by running notebooks/02_render.ipynb "
                                    "through papermill. A lock with a FINISHED final of the same final spec is "
                                    "skipped unless --force; a failing lock is recorded (run FAILED, notebook "
                                    "attached) and the batch goes on. Exit status 1 if any lock failed.")
    rp.add_argument("--locks", nargs="+", metavar="NAME", help="lock names (space or comma separated; default: all)")
    rp.add_argument("--model", choices=list(PRESETS), metavar="PRESET",
                    help="final preset (default: t2v-a14b; i2v-a14b for --mode first-frame)")
    rp.add_argument("--mode", default="fresh", choices=["fresh", "first-frame", "draft-v2v"],
                    help="how the draft carries over (default fresh)")
    rp.add_argument("--strength", type=_number("strength", "allowed 0 < strength <= 1"),
                    help="draft-v2v only: 0 < strength <= 1, the noise level the final starts from (it runs at "
                         "flow shift 1) and the share of the steps that run (default 0.15)")
    rp.add_argument("--frame", type=_integer("frame_index", "use an integer >= 0 (a frame of the draft)"),
                    help="first-frame only: the draft frame to start from (default 0)")
    rp.add_argument("--seed", type=seed, help="final seed (default: a random one per lock, drawn at its render; the same "
                    "replay run again skips the locks it rendered, --force renders them anew). Seeds never carry over")
    rp.add_argument("--steps", type=steps, help="num_inference_steps (default: the final preset's)")
    rp.add_argument("--width", type=width, help="width in pixels (default: the final preset's)")
    rp.add_argument("--height", type=height, help="height in pixels (default: the final preset's)")
    rp.add_argument("--frames", type=frames, help="num_frames, 4k+1 (default: the final preset's)")
    rp.add_argument("--force", action="store_true", help="render again locks that already have this final")
    rp.add_argument("--out", metavar="DIR", default="outputs/replay", help="output folder (default outputs/replay)")
    rp.add_argument("--notebook", metavar="PATH", default=None, help="the final-render notebook "
                    "(default: notebooks/02_render.ipynb of this checkout)")
    rp.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N")
    rp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    rp.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    rp.set_defaults(func=_replay)

    u = sub.add_parser("ui", help="open the MLflow UI on the project's store")
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=_port, default=5000)
    u.add_argument("--tracking-uri", help="MLflow store (default: as for render)")
    u.set_defaults(func=_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wanflow`` command. Bad input exits with status 2 and one ``error:`` line per problem."""
    from pydantic import ValidationError

    from wanflow.exceptions import ModelNotFoundError, TrackingError
    from wanflow.spec import explain

    args = build_parser().parse_args(argv)
    # transformers warns at import about optional image backends the Wan pipelines don't use
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return args.func(args)
    except ValidationError as err:
        print("error: invalid render settings:\n  " + explain(err).replace("\n", "\n  "), file=sys.stderr)
    except (ModelNotFoundError, TrackingError, ValueError, OSError) as err:
        # LockError and bad device/dtype/stage/spec are ValueErrors whose message starts with the field;
        # OSError covers unwritable folders (PermissionError) and missing files
        print(f"error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: runs that had started are marked KILLED; unfinished files were removed", file=sys.stderr)
        return 130
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
