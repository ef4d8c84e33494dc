"""`cvgen farm openjd|opencue JOB.json`: a TD's command line over the farm modules.

Options given here override the job file's `farm` section (what a host wrote), which overrides
the op's defaults. The farm modules are imported only when a farm command runs, so the rest of
`cvgen` starts without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.farm import ENGINES, check_engine

if TYPE_CHECKING:
    from .model import FarmJob


def add_farm_parser(sub: argparse._SubParsersAction) -> None:
    """`cvgen farm ENGINE JOB.json [options]`; options only one engine understands are grouped as such."""
    farm = sub.add_parser("farm", help="describe a job file for a render farm: an Open Job Description bundle "
                                       "(AWS Deadline Cloud) or an OpenCue job")
    farm.add_argument("engine", metavar="ENGINE", help=" or ".join(ENGINES))
    farm.add_argument("job", type=Path, help="job file (JSON), as hosts write it; its farm section gives defaults")
    farm.add_argument("-o", "--output", type=Path, help="openjd: the bundle folder to write (required); "
                                                         "opencue: save the job spec XML here instead of printing it")
    farm.add_argument("--chunk", help="frames per task (default: the job file's, else 10)")
    farm.add_argument("--warmup", help="frames rendered and discarded before each chunk (default: the op's)")
    farm.add_argument("--gpus", help="GPUs per task (default: 1 for ops with a model, else 0)")
    farm.add_argument("--gpu-memory", help="GPU memory per task, e.g. 16G")
    farm.add_argument("--cpus", help="CPU cores per task")
    farm.add_argument("--memory", help="RAM per task, e.g. 32G")
    farm.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                      help="environment variable for every task (repeatable)")
    farm.add_argument("--cvgen", default="cvgen", help="the cvgen command on the farm's nodes (default %(default)s)")
    opencue = farm.add_argument_group("OpenCue only")
    opencue.add_argument("--show", help="show (default: the job file's, else $SHOW or pyoutline's default)")
    opencue.add_argument("--shot", help="shot (default: the job file's, else $SHOT or pyoutline's default)")
    opencue.add_argument("--tags", help="host tags, comma-separated, e.g. gpu,cuda")
    opencue.add_argument("--submit", action="store_true", help="launch the job on the Cuebot named by $CUEBOT_HOSTS")
    farm.set_defaults(func=cmd_farm)


def cmd_farm(args: argparse.Namespace) -> int:
    check_engine(args.engine)
    if args.engine == "openjd":
        return _openjd(args)
    return _opencue(args)


def _openjd(args: argparse.Namespace) -> int:
    from .openjd import write_bundle

    given = [f"--{name}" for name in ("show", "shot", "tags", "submit") if getattr(args, name)]
    if given:
        raise ProtocolError(f"{', '.join(given)}: OpenCue only; a bundle is submitted with `deadline bundle submit`")
    if args.output is None:
        raise ProtocolError("cvgen farm openjd needs -o DIR, the folder to write the job bundle into")
    job = _farm_job(args)
    write_bundle(job, args.output)
    print(job.summary())
    print(f"wrote the job bundle {args.output}; submit it with: deadline bundle submit {args.output}")
    return 0


def _opencue(args: argparse.Namespace) -> int:
    from .opencue import job_spec, submit

    job = _farm_job(args)
    spec = job_spec(job)
    if args.output:
        args.output.write_text(spec + "\n", encoding="utf-8")
        print(f"{job.summary()}\nwrote the OpenCue job spec {args.output}")
    elif not args.submit:
        print(spec)
    if args.submit:
        print(f"launched OpenCue job(s) {', '.join(submit(spec))}")
    return 0


def _farm_job(args: argparse.Namespace) -> FarmJob:
    """The job file's submission with the options given on the command line on top."""
    from .model import farm_job, load_submission, parse_mib

    overrides: dict[str, Any] = {}
    for option in ("chunk", "warmup", "gpus", "cpus"):
        if getattr(args, option) is not None:
            overrides[option] = _whole(getattr(args, option), f"--{option}")
    if args.gpu_memory is not None:
        overrides["gpu_memory_mib"] = parse_mib(args.gpu_memory, "--gpu-memory")
    if args.memory is not None:
        overrides["memory_mib"] = parse_mib(args.memory, "--memory")
    if args.env:
        overrides["env"] = dict(_assignment(text) for text in args.env)
    for option in ("show", "shot"):
        if getattr(args, option) is not None:
            overrides[option] = getattr(args, option)
    if args.tags is not None:
        overrides["tags"] = tuple(t.strip() for t in args.tags.split(",") if t.strip())
    return farm_job(args.job, load_submission(args.job, overrides), cvgen=args.cvgen)


def _whole(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"{option} must be a whole number, not {text!r}") from None


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ProtocolError(f"--env must look like NAME=VALUE, not {text!r}")
    return name, value
