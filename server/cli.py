"""`cvgen` command line: serve, render a job file, describe it for a render farm, import footage, run the demo,
evaluate results."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cvgen.protocol.errors import CvgenError, ProtocolError
from cvgen.protocol.jobs import DEFAULT_COLORSPACE, JobSpec, read_job_data
from cvgen.protocol.limits import Limits

from .farm.commands import add_farm_parser

if TYPE_CHECKING:
    import numpy as np


MODELS_HELP = "models file (TOML) naming local models (default: $CVGEN_MODELS, else ~/.config/cvgen/models.toml)"
MEMORY_HELP = ("bytes of model weights to keep loaded per device, e.g. 20G or 512M; least recently used models "
               "are unloaded to stay under it (default: 70%% of each device's memory)")


def memory_size(text: str) -> int:
    from .core.models import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except CvgenError as exc:
        print(f"cvgen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cvgen: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server that hosts send jobs to")
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555",
                       help="ZeroMQ endpoint to listen on; port * picks a free one (default %(default)s)")
    serve.add_argument("--jobs-dir", default="cvgen-jobs", help="folder for job folders (default ./%(default)s)")
    serve.add_argument("--device", action="append", dest="devices",
                       help="device to run jobs on (repeatable; default: every GPU, else the CPU)")
    serve.add_argument("--models", help=MODELS_HELP)
    serve.add_argument("--model-memory", type=memory_size, metavar="SIZE", help=MEMORY_HELP)
    serve.add_argument("--keys", type=Path, help="key folder from `cvgen keys generate`: encrypt with CurveZMQ and "
                                                 "admit only the clients in its authorized/ folder (required for "
                                                 "any address but loopback)")
    serve.add_argument("--admin", action="append", dest="admins", metavar="NAME",
                       help="client (KEYS/authorized/NAME.key) that sees, attaches to and cancels every client's "
                            "jobs, not only its own (repeatable; needs --keys)")
    serve.add_argument("--input-root", action="append", dest="input_roots", metavar="DIR",
                       help="folder requests may read frames from (repeatable; default: anywhere on loopback, "
                            "nowhere but inline frames on any other address)")
    serve.add_argument("--output-root", action="append", dest="output_roots", metavar="DIR",
                       help="folder requests may write results to besides the jobs folder (repeatable; default: "
                            "anywhere on loopback, only the jobs folder on any other address)")
    for f in fields(Limits):
        serve.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, metavar="N",
                           help=f"the most {f.metadata['help']} (default %(default)s; advertised in hello)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="CurveZMQ keys for a server other machines reach")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser("generate", help="make the server's key pair (once) and a pair per client")
    generate.add_argument("folder", type=Path, help="key folder (server.key*, authorized/, clients/)")
    generate.add_argument("--client", action="append", dest="clients", metavar="NAME",
                          help="a workstation or farm to admit (repeatable; default: one named 'client' when "
                               "the folder is new)")
    generate.set_defaults(func=cmd_keys_generate)
    revoke = keys_sub.add_parser("revoke", help="remove a client from the allow-list; a running server refuses "
                                                "its requests at once, open connections included")
    revoke.add_argument("folder", type=Path, help="key folder (server.key*, authorized/, clients/)")
    revoke.add_argument("name", help="client name, as in authorized/NAME.key")
    revoke.set_defaults(func=cmd_keys_revoke)

    render = sub.add_parser("render", help="run a job file in this process (what a farm task runs)")
    render.add_argument("job", type=Path, help="job file (JSON)")
    render.add_argument("--frames", help="sub-range A-B to render (a farm chunk); default the whole job")
    render.add_argument("--output", type=Path, help="folder for the frames (default: the job's output, "
                                                    "else JOBNAME-frames beside the job file)")
    render.add_argument("--models", help=MODELS_HELP)
    render.add_argument("--model-memory", type=memory_size, metavar="SIZE", help=MEMORY_HELP)
    render.add_argument("--device", help="device for ops with a model, e.g. cuda:1 or cpu (default: the first GPU, else the CPU)")
    render.add_argument("--warmup", type=int, help="frames before the first one that ops carrying state from frame "
                                                   "to frame render and discard, so a chunk's seam does not jump "
                                                   "(default: the op's)")
    render.set_defaults(func=cmd_render)

    add_farm_parser(sub)

    models = sub.add_parser("models", help="list or check the configured models")
    models.add_argument("--models", help=MODELS_HELP)
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="the models the server can use: kind, path, device, precision, "
                          "parameters").set_defaults(func=cmd_models_list)
    check = models_sub.add_parser("check", help="load a model and run one tiny forward pass")
    check.add_argument("name")
    check.add_argument("--device", help="device to load it on (default: the first GPU, else the CPU)")
    check.set_defaults(func=cmd_models_check)

    imp = sub.add_parser("import", help="convert a .mp4/.mov to a scene-linear EXR sequence")
    imp.add_argument("video", type=Path)
    imp.add_argument("output", help="output path with a frame placeholder, e.g. plates/shot.####.exr")
    imp.add_argument("--first-frame", type=int, default=1001, help="number of the first frame (default %(default)s)")
    imp.add_argument("--count", type=int, help="number of frames to import (default all)")
    imp.add_argument("--colorspace", default=DEFAULT_COLORSPACE, help="scene-linear space to write (default %(default)s)")
    imp.set_defaults(func=cmd_import)

    add_eval_parser(sub)

    demo = sub.add_parser("demo", help="build a composite shot, run it through a real server, write EXRs and a preview")
    demo.add_argument("--out", type=Path, default=Path("cvgen-demo"), help="output folder (default ./%(default)s)")
    demo.add_argument("--frames", type=int, default=24, help="shot length (default %(default)s)")
    demo.add_argument("--video", type=Path, help="footage to build the shot from (default: the shared sample clip)")
    demo.set_defaults(func=cmd_demo)
    return parser


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="measure results (CLIP consistency and text alignment, PickScore, warp and "
                                     "interpolation error, harmonisation error, flicker) into a JSON/HTML report")
    ev.add_argument("result", help="result: EXR sequence with a #### or %%04d placeholder, or a video file")
    ev.add_argument("--compare", action="append", default=[], metavar="RESULT",
                    help="another result of the same shot to put beside it (repeatable)")
    ev.add_argument("--label", action="append", dest="labels", metavar="NAME",
                    help="name of each result in the report, in order: RESULT, then each --compare "
                         "(default: the path's stem)")
    ev.add_argument("--source", metavar="SEQ", help="the source the results were made from; optical flow is "
                                                    "computed on it (default: on each result, and the report says so)")
    ev.add_argument("--original", metavar="SEQ", help="the untouched original, for the harmonisation error")
    ev.add_argument("--matte", metavar="SEQ", help="the composite's matte (foreground = 1), for the harmonisation "
                                                   "error and flicker")
    ev.add_argument("--prompt", metavar="TEXT", default="", help="the prompt, for CLIP text alignment and PickScore")
    ev.add_argument("--frames", metavar="A-B", help="host frames to measure (default: every frame of the result)")
    ev.add_argument("--colorspace", metavar="NAME", default=DEFAULT_COLORSPACE,
                    help="scene-linear colour space of the EXR sequences (default %(default)s)")
    ev.add_argument("--models", metavar="FILE", help=MODELS_HELP)
    ev.add_argument("--clip", metavar="NAME", default="",
                    help="CLIP model from the models file (default: the clip kind's default)")
    ev.add_argument("--pickscore", metavar="NAME", default="",
                    help="PickScore model from the models file (default: the pickscore kind's default)")
    ev.add_argument("--out", type=Path, required=True, metavar="REPORT.json",
                    help="JSON report to write; the HTML page goes beside it (REPORT.html)")
    ev.set_defaults(func=cmd_eval)


def cmd_serve(args: argparse.Namespace) -> int:
    from cvgen.protocol.addresses import is_loopback

    from .auth import ServerKeys
    from .paths import PathPolicy
    from .service import Server

    if args.admins and not args.keys:
        raise ProtocolError("--admin needs --keys: without keys every job already belongs to the one local user")
    keys = ServerKeys.load(args.keys, args.admins or ()) if args.keys else None
    default = None if is_loopback(args.bind) else []
    paths = PathPolicy.roots(args.input_roots or default, args.output_roots or default)
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    server = Server(args.bind, args.jobs_dir, devices=args.devices, models_file=args.models, keys=keys,
                    paths=paths, limits=limits, model_memory=args.model_memory)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: server.reload_keys.set())
    print(f"cvgen server listening on {server.endpoint} (jobs in {server.store.root}, "
          f"devices {', '.join(server.devices)})", flush=True)
    server.serve(stop)
    print("cvgen server stopped", flush=True)
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .auth import SERVER_SECRET, generate_keys

    new = not (args.folder / SERVER_SECRET).exists()
    clients = args.clients or (["client"] if new else [])
    if not clients and not new:
        raise ProtocolError(f"{args.folder} already has server keys; name a client to add with --client NAME")
    for path in generate_keys(args.folder, clients):
        print(f"wrote {path}")
    print(f"serve with: cvgen serve --bind tcp://0.0.0.0:5555 --keys {args.folder}")
    print(f"give each workstation {args.folder / 'server.key'} and its clients/NAME.key_secret "
          "(keep every .key_secret private)")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .auth import revoke_key

    for path in revoke_key(args.folder, args.name):
        print(f"removed {path}")
    print(f"revoked {args.name}: a running `cvgen serve --keys {args.folder}` refuses its requests at once, on "
          "connections already open too (no restart or SIGHUP needed); running jobs go on")
    print(f"to admit {args.name} again, copy {args.folder / 'clients' / (args.name + '.key')} into "
          f"{args.folder / 'authorized'}")
    return 0


def parse_frames(text: str) -> range:
    match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", text)
    if not match:
        raise ProtocolError(f"--frames must look like 1001-1010 or 1001, not {text!r}")
    a = int(match.group(1))
    b = int(match.group(2)) if match.group(2) is not None else a
    if b < a:
        raise ProtocolError(f"--frames {text} is empty: the last frame is before the first")
    return range(a, b + 1)


def cmd_render(args: argparse.Namespace) -> int:
    from .jobs.runner import run_job

    spec = JobSpec.from_dict(read_job_data(args.job))
    base = args.job.resolve().parent
    output = args.output or (Path(spec.output) if spec.output else base / f"{args.job.stem}-frames")
    if not output.is_absolute():
        output = base / output
    frames = parse_frames(args.frames) if args.frames else None

    def on_frame(frame: int, path: Path, image: object) -> None:
        print(f"frame {frame}: {path}", flush=True)

    from .core.models import ModelCache, ModelRegistry

    models = ModelCache(ModelRegistry.load(args.models), args.model_memory)
    written = run_job(spec, output, base=base, frames=frames, on_frame=on_frame, models=models, device=args.device,
                      warmup=args.warmup)
    print(f"rendered {len(written)} frame(s) into {output}", flush=True)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from .core.models import ModelRegistry
    from .core.models.listing import describe_entry

    registry = ModelRegistry.load(args.models)
    print(f"  {'name':18s} {'kind':11s} {'device':7s} {'precision':9s} {'parameters':>10s}  path")
    for name in registry.names():
        row = describe_entry(registry.entry(name))
        marker = "*" if registry.default_for(row["kind"]) == name else " "
        print(f"{marker} {name:18s} {row['kind']:11s} {row['device']:7s} {row['dtype']:9s} {row['parameters']:>10s}  "
              f"{row['path']}")
        if row["problem"]:
            print(f"    ! {row['problem']}")
    print("(* = the default of its kind; built-in tiny models have random weights: real results need real models)")
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    from .core.models import KINDS, ModelRegistry, load

    registry = ModelRegistry.load(args.models)
    entry = registry.entry(args.name)
    model = load(entry, device=args.device)
    kind = KINDS[entry.kind]
    print(f"{entry.name} ({kind.label}): loaded on {model.device} as {str(model.dtype).removeprefix('torch.')}, "
          f"fingerprint {model.fingerprint}")
    print(f"  {kind.probe(model)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from cvgen.protocol.jobs import frame_path

    from .io.exr import write_exr
    from .io.video import read_video

    count = 0
    for count, image in enumerate(read_video(args.video, args.colorspace, count=args.count), start=1):
        path = Path(frame_path(args.output, args.first_frame + count - 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_exr(path, image, dtype="float16")
    print(f"imported {count} frame(s) from {args.video} to {args.output}", flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() != ".json":
        raise ProtocolError(f"--out {args.out} names the JSON report; give it a .json suffix (the HTML page goes "
                            "beside it)")
    from .core.models import ModelRegistry
    from .eval import evaluate
    from .eval.report import format_table, html_path, sheet_frames, write_html, write_json

    report = evaluate([args.result, *args.compare], source=args.source, original=args.original, matte=args.matte,
                      prompt=args.prompt, frames=parse_frames(args.frames) if args.frames else None,
                      colorspace=args.colorspace, registry=ModelRegistry.load(args.models), clip=args.clip,
                      pickscore=args.pickscore, labels=args.labels)
    shown = sheet_frames(report.frames)
    sheet = {r.label: contact_sheet_frames(r.path, report.frames, shown, args.colorspace, r.label)
             for r in report.results}
    write_json(report, args.out)
    page = write_html(report, html_path(args.out), sheet, shown)
    print(format_table(report), end="")
    print(f"wrote {args.out} and {page}", flush=True)
    return 0


def contact_sheet_frames(path: str, frames: list[int], shown: list[int], colorspace: str,
                         label: str) -> list[np.ndarray]:
    """Display-referred frames `shown` of a result. A video has no frame numbers (its first frame
    is the first evaluated), so it is read up to the last frame shown; an EXR sequence only at them."""
    from .eval.sequences import is_frame_sequence, read_sequence

    if not shown:
        return []
    if is_frame_sequence(path):
        return list(read_sequence(path, shown, colorspace, label).display)
    display = read_sequence(path, frames[: frames.index(shown[-1]) + 1], colorspace, label).display
    return [display[frames.index(frame)] for frame in shown]


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, args.frames, args.video)
    return 0


if __name__ == "__main__":
    sys.exit(main())
