"""The command line as a TD uses it: import footage, run the demo; the host-side package alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

from cvgen.server.io.exr import read_exr


def cvgen(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvgen.server.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_import_writes_a_linear_exr_sequence_with_host_frame_numbers(shared_data, tmp_path):
    result = cvgen("import", str(shared_data / "video" / "woman-running.mp4"), str(tmp_path / "plate.####.exr"),
                   "--first-frame", "1001", "--count", "3")
    assert result.returncode == 0, result.stderr
    frames = sorted(p.name for p in tmp_path.glob("plate.*.exr"))
    assert frames == ["plate.1001.exr", "plate.1002.exr", "plate.1003.exr"]
    image = read_exr(tmp_path / "plate.1001.exr")
    assert image.pixels.dtype == np.float16 and image.pixels.shape == (512, 512, 4)
    assert 0.0 <= float(image.stack(("R", "G", "B")).mean()) <= 1.0


def test_import_of_a_missing_clip_is_a_clear_error(tmp_path):
    result = cvgen("import", str(tmp_path / "nope.mov"), str(tmp_path / "x.####.exr"))
    assert result.returncode == 1 and "nope.mov" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_through_a_real_server_and_writes_exrs_and_a_preview(tmp_path):
    result = cvgen("demo", "--out", str(tmp_path / "demo"), "--frames", "3")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "demo"
    frames = sorted((out / "colormatch").glob("demo.*.exr"))
    assert [p.name for p in frames] == ["demo.1001.exr", "demo.1002.exr", "demo.1003.exr"]
    plate = read_exr(out / "inputs" / "plate.1001.exr")
    result_frame = read_exr(frames[0])
    assert result_frame.channels == plate.channels and result_frame.pixels.shape == plate.pixels.shape
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "preview.png") in result.stdout
    restyled = sorted((out / "restyle").glob("demo.*.exr"))
    assert [p.name for p in restyled] == ["demo.1001.exr", "demo.1002.exr", "demo.1003.exr"]
    outside = read_exr(out / "inputs" / "fg.1001.exr").channel("A") == 0
    rgb, plate_rgb = read_exr(restyled[0]).stack(("R", "G", "B")), plate.stack(("R", "G", "B"))
    assert outside.any() and np.array_equal(rgb[outside], plate_rgb[outside]), "restyled inside the fg's matte only"
    assert not np.array_equal(rgb[~outside], plate_rgb[~outside])
    assert "Depth Anything" in result.stdout, "the note says what real restyle results need"



def test_the_demos_restyle_uses_a_configured_depth_model_and_names_the_builtin_otherwise(tmp_path, no_user_models):
    """An artist with a real depth model configured gets it in the demo; without one the demo names
    `tiny-depth` (restyle refuses to estimate depth with random weights unless told to)."""
    from cvgen.server.core.models import ModelRegistry, ensure_builtin
    from cvgen.server.demo import depth_model

    assert depth_model({"models": ModelRegistry.load().describe()}) == "tiny-depth"
    models = tmp_path / "models.toml"
    models.write_text(f'[models.da]\nkind = "depth"\npath = "{ensure_builtin("depth")}"\n')
    assert depth_model({"models": ModelRegistry.load(models).describe()}) == ""

def test_protocol_package_needs_only_pyzmq_msgpack_and_numpy(server):
    """What Blender and Nuke load: no OpenImageIO, OpenColorIO, PyAV or server code may come along."""
    code = f"""
import importlib.abc, sys
BLOCKED = ("OpenImageIO", "PyOpenColorIO", "av", "torch", "cvgen.server")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"host environments have no {{name}}")
sys.meta_path.insert(0, Block())
from cvgen.protocol.client import Client
with Client({server.endpoint!r}) as client:
    print(sorted(op["name"] for op in client.hello()["ops"]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "colormatch" in result.stdout


def test_models_list_and_check(tmp_path, tiny_model_path):
    models_file = tmp_path / "models.toml"
    models_file.write_text(f'default = "mine"\n[models.mine]\npath = "{tiny_model_path}"\n')
    listed = cvgen("models", "--models", str(models_file), "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line[2:].split()[0]: [line[0], *line[2:].split()] for line in listed.stdout.splitlines()[1:]
            if line[:1] in "* " and line[2:3] != " "}
    assert rows["mine"][:6] == ["*", "mine", "sd", "auto", "auto", "1.2"] and rows["mine"][6] == "M"
    assert rows["tiny"][:4] == [" ", "tiny", "sd", "auto"] and rows["tiny"][-1].endswith("tiny-v1")
    for kind in ("controlnet", "ip_adapter", "depth", "svd", "t2v", "lora", "clip", "pickscore"):
        name = "tiny-" + kind.replace("_", "-")
        assert rows[name][:3] == ["*", name, kind], listed.stdout
        assert rows[name][6] in ("K", "M"), f"{name} lists no parameter count"
    checked = cvgen("models", "--models", str(models_file), "check", "mine")
    assert checked.returncode == 0, checked.stderr
    assert "mine (Stable Diffusion): loaded on cpu as float32" in checked.stdout
    assert "prediction epsilon" in checked.stdout and "one UNet step on 8x8 latents: (1, 4, 8, 8)" in checked.stdout


@pytest.mark.parametrize("kind", ["controlnet", "ip_adapter", "depth", "svd", "t2v", "lora", "clip", "pickscore"])
def test_models_check_runs_every_builtin_kind(kind, capsys):
    from cvgen.server.cli import main

    name = "tiny-" + kind.replace("_", "-")
    assert main(["models", "check", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name} (") and "loaded on cpu as float32" in out and len(out.splitlines()) == 2


def test_a_device_given_twice_is_refused(tmp_path):
    result = cvgen("serve", "--device", "cpu", "--device", "cpu", "--jobs-dir", str(tmp_path / "jobs"))
    assert result.returncode == 1 and "--device cpu is given more than once" in result.stderr
    assert "Traceback" not in result.stderr


def test_model_memory_must_be_a_size():
    result = cvgen("serve", "--model-memory", "lots")
    assert result.returncode == 2 and "'lots' is not a memory size" in result.stderr


def test_models_check_names_what_is_wrong(tmp_path):
    missing = cvgen("models", "check", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "models.toml"
    broken.write_text(f'[models.gone]\npath = "{tmp_path / "no-such-model"}"\n')
    result = cvgen("models", "--models", str(broken), "check", "gone")
    assert result.returncode == 1 and "no-such-model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("suffix", [".exr", ".png"])
def test_import_refuses_image_files_and_writes_nothing(tmp_path, suffix):
    """An EXR given to import used to come out clipped to 1 and linearised twice; image files
    (an EXR or a PNG sequence) are not converted at all, and nothing is written."""
    source = tmp_path / f"plate.1001{suffix}"
    pixels = np.full((8, 8, 3), 0.75 if suffix == ".png" else 2.5, np.float32)
    out = oiio.ImageOutput.create(str(source))
    assert out.open(str(source), oiio.ImageSpec(8, 8, 3, "half" if suffix == ".exr" else "uint8"))
    assert out.write_image(pixels) and out.close()
    before = source.read_bytes()
    result = cvgen("import", str(source), str(tmp_path / "out" / "x.####.exr"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(source) in result.stderr and "video" in result.stderr
    assert "no import" in result.stderr
    assert not (tmp_path / "out").exists() and source.read_bytes() == before
