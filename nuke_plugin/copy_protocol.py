"""Copy this checkout's `cvgen.protocol` package into a folder for Nuke's Python.

    python nuke_plugin/copy_protocol.py SITE_FOLDER

Writes SITE_FOLDER/cvgen/protocol/ (replacing an earlier copy). Name SITE_FOLDER in
$CVGEN_NUKE_SITE and install pyzmq and msgpack into it with `pip install --target` (see
nuke_plugin/README.md). Nuke's Python cannot install cvgen itself: the package needs Python
3.11 and brings the server's dependencies, while the plugin needs the protocol only.
Run it again after updating cvgen, so the plugin speaks the server's protocol version.
Standard library only, so any Python 3.9 or newer can run it, Nuke's own included.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "protocol"


def copy_protocol(site: Path) -> Path:
    """Copy the package to `site`/cvgen/protocol; returns that folder."""
    if not (SOURCE / "__init__.py").is_file():
        raise FileNotFoundError(f"{SOURCE} is not the cvgen.protocol package; run this script from a cvgen checkout")
    target = site / "cvgen" / "protocol"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the folder named in $CVGEN_NUKE_SITE")
    args = parser.parse_args(argv)
    try:
        target = copy_protocol(args.site)
    except OSError as exc:
        print(f"copy_protocol: {exc}", file=sys.stderr)
        return 1
    print(f"copied cvgen.protocol to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
