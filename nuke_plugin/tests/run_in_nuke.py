"""Exercise the real cvgen node in a licensed Nuke, end to end, against a running server.

    cvgen serve &                                   # or any server this machine can reach
    nuke -t nuke_plugin/tests/run_in_nuke.py tcp://127.0.0.1:5555 /tmp/cvgen-nuke-check

For a server started with `cvgen serve --keys KEYS`, set $CVGEN_SERVER_KEY and $CVGEN_CLIENT_KEY
(KEYS/server.key and KEYS/clients/NAME.key_secret) first: the node takes its key files from them.

It builds a tiny script (a checkerboard plate written to EXR and read back with a Read node, a
tinted disc as the premultiplied foreground), creates a cvgen node through the plugin, checks
its inputs' labels, renders colormatch by paths and then inline, and checks what the node's
output shows: the plate outside the matte, a changed foreground inside, every frame on disk. Then it presses Submit to farm
with the OpenJD engine (the `cvgen` on PATH, or $CVGEN_EXECUTABLE) and checks the bundle.
The plain modules under it are tested without Nuke by the repository's tests/test_nuke_*.py;
this covers the Nuke calls.
Exit status 0: every check passed; 1: a check failed; 2: the plugin could not be loaded.
"""

from __future__ import annotations

import os
import sys

PLUGIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = (1001, 1003)
SIZE = (128, 96)
TRANSFERS = ("paths", "inline")
CHECKS_PER_RENDER = 4


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    address = argv[1]
    work = os.path.abspath(argv[2] if len(argv) > 2 else "cvgen-nuke-check")
    if PLUGIN not in sys.path:
        sys.path.insert(0, PLUGIN)
    from cvgen_nuke import deps

    absent = deps.add_site_folders(os.environ, sys.path)
    if deps.missing():
        print(deps.install_hint(deps.missing(), absent), file=sys.stderr)
        return 2
    import nuke
    from cvgen.protocol import CvgenError
    from cvgen_nuke import nuke_adapter

    plate, fg = build_inputs(nuke, work)
    node = nuke_adapter.create_node(address)
    node.setInput(0, plate)
    node.setInput(1, fg)
    node["op"].setValue("colormatch")
    node["output"].setValue(os.path.join(work, "comp"))
    failures = check_input_labels(node)
    for transfer in TRANSFERS:
        node["transfer"].setValue(transfer)
        try:
            progress = nuke_adapter.render(node)
        except CvgenError as exc:  # the message the compositor would see
            print(f"FAILED: rendering {transfer}: {exc}", file=sys.stderr)
            return 1
        failures += check(nuke, node, plate, fg, progress, transfer)
    failures += check_farm(node)
    for line in failures:
        print(f"FAILED: {line}", file=sys.stderr)
    checks = CHECKS_PER_RENDER * len(TRANSFERS) + 2
    print(f"cvgen Nuke check: {checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


def build_inputs(nuke, work: str):
    """A Read node on a checkerboard plate written as EXR, and a tinted, premultiplied disc."""
    nuke.addFormat(f"{SIZE[0]} {SIZE[1]} 1 cvgen_check")
    root = nuke.root()
    root["format"].setValue("cvgen_check")
    root["first_frame"].setValue(FRAMES[0])
    root["last_frame"].setValue(FRAMES[1])
    os.makedirs(work, exist_ok=True)
    checker = nuke.nodes.CheckerBoard2(format="cvgen_check")
    write = nuke.nodes.Write(inputs=[checker], file=os.path.join(work, "plate.####.exr").replace("\\", "/"))
    write["file_type"].setValue("exr")
    write["channels"].setValue("rgb")
    nuke.execute(write, FRAMES[0], FRAMES[1])
    plate = nuke.nodes.Read(file=write["file"].value(), first=FRAMES[0], last=FRAMES[1])
    disc = nuke.nodes.Radial(format="cvgen_check", area="32 24 96 72", softness=0.4)
    fg = nuke.nodes.Multiply(inputs=[disc], channels="rgb")
    fg["value"].setValue([3.0, 1.5, 0.4, 1.0])
    return plate, fg


def check_input_labels(node) -> list[str]:
    """The node's input arrows carry colormatch's labels for the server's roles (1 check)."""
    names = {int(n["number"].value()): n.name() for n in node.nodes() if n.Class() == "Input"}
    labels = [names[i] for i in sorted(names)][:3]
    return [] if labels == ["Plate", "Foreground", "Matte"] else [f"the node's first inputs are named {labels}"]


def check(nuke, node, plate, fg, progress, transfer: str) -> list[str]:
    """The node's output as a compositor sees it; returns what is wrong (CHECKS_PER_RENDER checks)."""
    from cvgen.protocol import frame_path

    failures = []
    results = node.node("result")["file"].value()
    missing = [f for f in range(FRAMES[0], FRAMES[1] + 1) if not os.path.exists(frame_path(results, f))]
    if missing or progress.outcome.state != "done":
        failures.append(f"{transfer}: frames {missing} missing, outcome {progress.outcome}")
    frame = FRAMES[0] + 1
    corner = [node.sample(c, 2.5, 2.5, frame=frame) for c in ("rgba.red", "rgba.green", "rgba.blue")]
    plate_corner = [plate.sample(c, 2.5, 2.5, frame=frame) for c in ("rgba.red", "rgba.green", "rgba.blue")]
    if corner != plate_corner:
        failures.append(f"{transfer}: outside the matte the output {corner} is not the plate {plate_corner}")
    over = nuke.nodes.Merge2(inputs=[plate, fg], operation="over")
    centre = node.sample("rgba.red", SIZE[0] / 2, SIZE[1] / 2, frame=frame)
    plain = over.sample("rgba.red", SIZE[0] / 2, SIZE[1] / 2, frame=frame)
    nuke.delete(over)
    if abs(centre - plain) < 1e-3:
        failures.append(f"{transfer}: inside the matte the output {centre} is a plain over ({plain})")
    if not node["status"].value().startswith("done"):
        failures.append(f"{transfer}: the status line says {node['status'].value()!r}")
    return failures


def check_farm(node) -> list[str]:
    """Submit to farm with OpenJD, chunks of 2: the job file and its bundle in OUTPUT/farm (1 check)."""
    from cvgen.protocol import CvgenError
    from cvgen_nuke import nuke_adapter

    node["farm_engine"].setValue("OpenJD")
    node["farm_chunk"].setValue(2)
    node["farm_cvgen"].setValue(os.environ.get("CVGEN_EXECUTABLE", "cvgen"))
    try:
        result = nuke_adapter.submit_to_farm(node)
    except CvgenError as exc:
        return [f"farm: {exc}"]
    if not os.path.isfile(os.path.join(result.output or "", "template.yaml")) or not os.path.isfile(result.job_file):
        return [f"farm: no bundle at {result.output} or no job file {result.job_file}"]
    if not node["status"].value().startswith("farm: wrote the OpenJD bundle"):
        return [f"farm: the status line says {node['status'].value()!r}"]
    return []


if __name__ == "__main__":
    sys.exit(main(sys.argv))
