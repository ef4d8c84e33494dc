"""Open Job Description job bundles for a cvgen job: what AWS Deadline Cloud submits.

The bundle is a folder with `template.yaml` (one step whose tasks each run `cvgen render` on a
chunk of frames) and `parameter_values.yaml` (the job file to render). Frames are an integer
task parameter of type `CHUNK[INT]` (the TASK_CHUNKING extension), so the farm, not cvgen, cuts
the range into contiguous chunks and a TD can change the range or the chunk size at submission
(`deadline bundle submit DIR -p ChunkSize=4`). Nodes must see the job file, its inputs and its
output folder at the same paths (shared storage); job attachments are not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cvgen.protocol.farm import Resources

from .model import FarmJob, render_command

SPECIFICATION = "jobtemplate-2023-09"
#: Task parameter holding each task's chunk of frames, e.g. `1001-1008`.
FRAME_PARAMETER = "Frame"


def job_template(job: FarmJob) -> dict[str, Any]:
    """The job template: parameters a TD may change at submission, one render step."""
    first, last = job.frames
    command = render_command(job.cvgen, "{{Param.JobFile}}", "{{Task.Param." + FRAME_PARAMETER + "}}", "{{Param.Warmup}}")
    step: dict[str, Any] = {
        "name": "Render",
        "parameterSpace": {
            "taskParameterDefinitions": [
                {
                    "name": FRAME_PARAMETER,
                    "type": "CHUNK[INT]",
                    "range": "{{Param.Frames}}",
                    "chunks": {"defaultTaskCount": "{{Param.ChunkSize}}", "rangeConstraint": "CONTIGUOUS"},
                }
            ]
        },
        "script": {"actions": {"onRun": {"command": command[0], "args": command[1:]}}},
    }
    amounts = host_amounts(job.resources)
    if amounts:
        step["hostRequirements"] = {"amounts": amounts}
    template: dict[str, Any] = {
        "specificationVersion": SPECIFICATION,
        "extensions": ["TASK_CHUNKING"],
        "name": f"cvgen {job.op} {job.name}",
        "description": f"cvgen {job.op} over frames {first}-{last}: each task renders a chunk with `cvgen render`.",
        "parameterDefinitions": [
            {"name": "JobFile", "type": "PATH", "objectType": "FILE",
             "description": "The cvgen job file every task renders from (on storage the nodes share)."},
            {"name": "Frames", "type": "STRING", "default": f"{first}-{last}", "minLength": 1,
             "description": "Frames to render, inside the job's range, e.g. 1001-1048."},
            {"name": "ChunkSize", "type": "INT", "default": job.chunk, "minValue": 1,
             "description": "Frames per task."},
            {"name": "Warmup", "type": "INT", "default": job.warmup, "minValue": 0,
             "description": "Frames rendered and discarded before each chunk by ops that carry state from frame "
                            "to frame, so chunk seams do not jump."},
        ],
        "steps": [step],
    }
    if job.env:
        template["jobEnvironments"] = [{"name": "CvgenEnvironment", "variables": dict(job.env)}]
    return template


def host_amounts(resources: Resources) -> list[dict[str, Any]]:
    """Per-task resources as OpenJD's standard worker amounts (memory in MiB); 0 asks for nothing."""
    wanted = {
        "amount.worker.gpu": resources.gpus,
        "amount.worker.gpu.memory": resources.gpu_memory_mib,
        "amount.worker.vcpu": resources.cpus,
        "amount.worker.memory": resources.memory_mib,
    }
    return [{"name": name, "min": amount} for name, amount in wanted.items() if amount]


def parameter_values(job: FarmJob) -> dict[str, Any]:
    """Deadline Cloud's parameter values file: the one parameter without a default."""
    return {"parameterValues": [{"name": "JobFile", "value": str(job.job_file)}]}


def write_bundle(job: FarmJob, folder: Path) -> list[Path]:
    """Write the bundle into `folder` (created if needed); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in (("template.yaml", job_template(job)), ("parameter_values.yaml", parameter_values(job))):
        path = folder / name
        path.write_text(yaml.safe_dump(document, sort_keys=False, width=120), encoding="utf-8")
        written.append(path)
    return written
