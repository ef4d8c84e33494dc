"""`evaluate` end to end: EXR sequences and a video file on disk, and the errors bad input gives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest

from cvgen.protocol.images import Image
from cvgen.server.core.models.registry import ModelRegistry
from cvgen.server.errors import InputError
from cvgen.server.eval import EvalReport, evaluate
from cvgen.server.io.exr import write_exr

HEIGHT, WIDTH = 48, 64
FRAMES = range(1001, 1006)
KEYS = ["clip_consistency_all", "clip_consistency_consecutive", "clip_text", "pickscore", "warp_error",
        "interpolation_error", "interpolation_psnr", "harmonization_mse", "harmonization_fmse",
        "harmonization_psnr", "flicker_stops"]


def texture(dx: float, seed: int = 0) -> np.ndarray:
    """(H, W, 3) smooth scene-linear texture in about [0.05, 0.45], moved dx pixels right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    image = np.zeros((HEIGHT, WIDTH, 3))
    for channel in range(3):
        for _ in range(5):
            fx, fy = rng.uniform(0.1, 0.4, 2)
            image[..., channel] += np.sin(fx * (xx - dx) + fy * yy + rng.uniform(0, 2 * np.pi))
    return (0.25 + 0.2 * image / 5).astype(np.float32)


def write_sequence(folder: Path, name: str, frames: dict[int, np.ndarray], channels=("R", "G", "B")) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, pixels in frames.items():
        write_exr(folder / f"{name}.{frame:04d}.exr", Image(pixels.astype(np.float32), channels), dtype="float")
    return str(folder / f"{name}.####.exr")


@pytest.fixture
def shot(tmp_path: Path) -> dict:
    """A source moving 0.5 px a frame; a clean result (the source) and one whose foreground flickers
    by known gains (stops) under a square matte."""
    source = {f: texture(0.5 * i) for i, f in enumerate(FRAMES)}
    matte = np.zeros((HEIGHT, WIDTH, 1), np.float32)
    matte[12:36, 16:48] = 1.0
    stops = np.array([0.0, 0.2, -0.1, 0.15, -0.2])
    flicker = {f: source[f] * np.where(matte > 0, 2**s, 1.0) for f, s in zip(FRAMES, stops)}
    return {
        "source": write_sequence(tmp_path / "src", "plate", source),
        "clean": write_sequence(tmp_path / "out", "clean", source),
        "flicker": write_sequence(tmp_path / "out", "flicker", flicker),
        "matte": write_sequence(tmp_path / "matte", "matte", {f: matte for f in FRAMES}, ("A",)),
        "stops": float(np.mean(np.abs(np.diff(stops)))),
        "folder": tmp_path,
    }


def by_key(report: EvalReport, index: int) -> dict:
    return {m.key: m for m in report.results[index].metrics}


def test_evaluate_exr_sequences_end_to_end(shot: dict) -> None:
    report = evaluate([shot["clean"], shot["flicker"]], source=shot["source"], original=shot["source"],
                      matte=shot["matte"], prompt="a stone wall", frames=FRAMES, registry=ModelRegistry({}),
                      clip="tiny-clip", pickscore="tiny-pickscore")
    assert report.frames == list(FRAMES) and report.flow_on == "source" and report.source == shot["source"]
    assert [r.label for r in report.results] == ["clean", "flicker"]
    assert report.models["clip"]["name"] == "tiny-clip" and report.models["pickscore"]["fingerprint"]
    assert set(report.versions) == {"cvgen", "opencv", "torch", "transformers"}
    clean, flicker = by_key(report, 0), by_key(report, 1)
    assert list(clean) == KEYS
    for metric in (*clean.values(), *flicker.values()):
        assert metric.not_computed is None and math.isfinite(metric.value), metric.key
    assert clean["harmonization_mse"].value == 0.0 and clean["harmonization_psnr"].value == pytest.approx(100.0)
    assert clean["warp_error"].value < 1e-4 and clean["flicker_stops"].value < 0.01
    assert flicker["flicker_stops"].value == pytest.approx(shot["stops"], abs=0.01)
    assert flicker["warp_error"].value > 10 * clean["warp_error"].value
    assert flicker["harmonization_fmse"].value > flicker["harmonization_mse"].value > 0
    assert flicker["interpolation_psnr"].value < clean["interpolation_psnr"].value
    assert sorted(clean["interpolation_psnr"].per_frame) == [1002, 1003, 1004]
    json.dumps(report.to_dict())


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    """A lossless-ish 8-bit H.264 file of display-referred frames in [0, 1]."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        for pixels in frames:
            rgb = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def test_evaluate_a_video_file_without_source_or_models(tmp_path: Path) -> None:
    path = tmp_path / "result.mp4"
    write_video(path, [texture(1.0 * i) * 2 for i in range(4)])
    report = evaluate([path], registry=ModelRegistry({}))
    assert report.frames == [1, 2, 3, 4] and report.flow_on == "result" and report.source is None
    assert report.models == {"clip": None, "pickscore": None}
    found = by_key(report, 0)
    assert [r.label for r in report.results] == ["result"]
    assert "no CLIP model configured" in found["clip_text"].not_computed
    assert "no PickScore model configured" in found["pickscore"].not_computed
    assert found["harmonization_mse"].not_computed.startswith("no original")
    assert found["warp_error"].value < 2e-3 and found["flicker_stops"].value < 0.05
    ranged = evaluate([path], frames=range(1001, 1004), registry=ModelRegistry({}))
    assert ranged.frames == [1001, 1002, 1003]


def test_bad_input_gives_one_clear_error(shot: dict, tmp_path: Path) -> None:
    registry = ModelRegistry({})
    (shot["folder"] / "out" / "clean.1003.exr").unlink()
    with pytest.raises(InputError, match=r"result frame 1003 is missing: no file .*clean\.1003\.exr"):
        evaluate([shot["clean"]], frames=FRAMES, registry=registry)
    small = write_sequence(tmp_path / "small", "small", {f: np.zeros((24, 32, 3)) for f in FRAMES})
    with pytest.raises(InputError, match=r"source frame 1001 of .*small\.####\.exr is 32x24 pixels; the result's "
                                         r"frames are 64x48"):
        evaluate([shot["flicker"]], source=small, frames=FRAMES, registry=registry)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a movie\n" * 100)
    with pytest.raises(InputError, match=r"junk\.mp4: FFmpeg cannot open it"):
        evaluate([junk], registry=registry)
    with pytest.raises(InputError, match=r"unknown colour space 'linear'"):
        evaluate([shot["flicker"]], frames=FRAMES, colorspace="linear", registry=registry)
    short = tmp_path / "short.mp4"
    write_video(short, [texture(0)] * 2)
    with pytest.raises(InputError, match=r"source video .*short\.mp4 has 2 frames; frames 1001-1005 need 5"):
        evaluate([shot["flicker"]], source=short, frames=FRAMES, registry=registry)
    with pytest.raises(InputError, match=r"no frames of .*nothing\.####\.exr found"):
        evaluate([str(tmp_path / "nothing.####.exr")], registry=registry)
    with pytest.raises(InputError, match=r"1 labels for 2 results"):
        evaluate([shot["flicker"], shot["source"]], labels=["a"], registry=registry)
