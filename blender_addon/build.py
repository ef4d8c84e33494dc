"""Build the installable extension zip: the add-on, a vendored cvgen.protocol, and the wheels.

    python blender_addon/build.py [--out dist/cvgen-blender-0.1.0.zip] [--wheels build/blender-wheels]

The wheels are exactly those `blender_manifest.toml` lists: each is fetched with
`pip download --only-binary=:all: --python-version 3.11 --platform TAG` (into a cache folder, so
a rebuild downloads nothing) and the build stops if pip brings a different file. The protocol
package is copied from the repository's `protocol/` to `_vendor/cvgen_protocol/` inside the zip;
it uses only relative imports, so it works under that name. The add-on's own folder is only read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ADDON = Path(__file__).resolve().parent
REPO = ADDON.parent
PROTOCOL = REPO / "protocol"
#: Files of the add-on folder that are tools, not part of the extension.
NOT_SHIPPED = {"build.py", "README.md"}


def wheel_request(filename: str) -> tuple[str, list[str]]:
    """`name==version` and the `--platform` tags that make pip choose this wheel file."""
    parts = filename[: -len(".whl")].split("-")
    name, version, platform = parts[0], parts[1], parts[-1]
    return f"{name}=={version}", platform.split(".")


def download(path: Path) -> str:
    """Fetch one wheel into its folder; pip's last error line if it could not (offline, say), else ""."""
    requirement, platforms = wheel_request(path.name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", *(a for p in platforms for a in ("--platform", p)),
         "--dest", str(path.parent), requirement],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"pip exit code {proc.returncode}"
    if not path.exists():
        raise SystemExit(f"pip did not download {path.name} (the manifest's wheel list is out of date?)")
    return ""


def fetch_wheels(manifest: dict, cache: Path) -> list[Path]:
    """The manifest's wheels from the cache folder, downloading the missing ones; all that cannot be
    downloaded are named in one message, so an offline build machine learns at once what to supply."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = [cache / Path(entry).name for entry in manifest.get("wheels", [])]
    failed = {path.name: why for path in wheels if not path.exists() and (why := download(path))}
    if failed:
        reason = next(iter(failed.values()))
        raise SystemExit(
            f"build.py: cannot download {len(failed)} wheel(s) that blender_manifest.toml lists ({reason}): "
            f"{', '.join(failed)}; download them from pypi.org on a machine with internet access and put them in "
            f"a folder, then pass it with --wheels {cache}"
        )
    return wheels


def addon_files() -> list[Path]:
    return sorted(
        p for p in ADDON.rglob("*")
        if p.is_file() and p.name not in NOT_SHIPPED and "__pycache__" not in p.parts and p.suffix != ".pyc"
        and p.relative_to(ADDON).parts[0] not in ("_vendor", "wheels")
    )


def build(out: Path, cache: Path) -> Path:
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    wheels = fetch_wheels(manifest, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in addon_files():
            zf.write(path, path.relative_to(ADDON).as_posix())
        zf.writestr("_vendor/__init__.py", '"""Packages bundled with the extension by build.py."""\n')
        for path in sorted(PROTOCOL.glob("*.py")):
            zf.write(path, f"_vendor/cvgen_protocol/{path.name}")
        for path in wheels:
            zf.write(path, f"wheels/{path.name}", compress_type=zipfile.ZIP_STORED)
    return out


def main(argv: list[str] | None = None) -> int:
    version = tomllib.loads((ADDON / "blender_manifest.toml").read_text())["version"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / f"cvgen-blender-{version}.zip")
    parser.add_argument("--wheels", type=Path, default=REPO / "build" / "blender-wheels",
                        help="cache folder for the downloaded wheels (default %(default)s)")
    args = parser.parse_args(argv)
    print(build(args.out, args.wheels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
