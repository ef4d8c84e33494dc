"""`cvgen eval` reports: the JSON round-trips, the table shows every result and metric, the HTML
page is self-contained with a plot per metric and a contact sheet, and the command runs end to end."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cvgen.server.errors import InputError
from cvgen.server.eval.report import (
    format_table,
    html_path,
    read_json,
    sheet_frames,
    write_html,
    write_json,
)
from cvgen.server.eval.results import EvalReport, Metric, SequenceResult

FRAMES = [1001, 1002, 1003, 1004]
NO_CLIP = "no clip model configured: add a [models.X] entry with kind = \"clip\" to the models file"


def warp(values: list[float]) -> Metric:
    per_frame = dict(zip(FRAMES[:-1], values))
    return Metric("warp_error", "Warp error", "", "lower", "Masked MSE of frame t+1 warped onto t, display sRGB.",
                  value=float(np.mean(values)), per_frame=per_frame)


def psnr(values: list[float]) -> Metric:
    return Metric("interpolation_psnr", "Interpolation PSNR", "dB", "higher", "PSNR of halfway-warp interpolation.",
                  value=float(np.mean(values)), per_frame=dict(zip(FRAMES[1:-1], values)))


def consistency(value: float) -> Metric:
    return Metric("clip_consistency_all", "CLIP frame consistency (all pairs)", "", "higher",
                  "Mean cosine of CLIP image embeddings over all ordered pairs of distinct frames.", value=value)


def clip_text() -> Metric:
    return Metric("clip_text", "CLIP text alignment", "", "higher", "100 x cosine of image and prompt embeddings.",
                  not_computed=NO_CLIP)


def make_report() -> EvalReport:
    results = [
        SequenceResult("input", "/shots/comp.####.exr",
                       [warp([0.004, 0.005, 0.006]), psnr([31.0, 30.5]), consistency(0.91), clip_text()]),
        SequenceResult("colormatch", "/shots/cm.####.exr",
                       [warp([0.002, 0.0025, 0.003]), psnr([34.25, 33.75]), consistency(0.95), clip_text()]),
    ]
    return EvalReport(frames=FRAMES, prompt="a red car", source="/shots/plate.####.exr", flow_on="source",
                      flow_method="OpenCV DIS optical flow (preset medium), no learned weights",
                      colorspace="Linear Rec.709 (sRGB)", display="sRGB display, [0, 1]",
                      models={"clip": None, "pickscore": {"name": "tiny-pickscore", "path": "/cache/pick",
                                                          "fingerprint": "abc123"}},
                      versions={"cvgen": "0.1.0", "opencv": "5.0.0", "torch": "2.13.0", "transformers": "5.0.0"},
                      results=results)


def test_json_round_trips_values_per_frame_reasons_definitions_and_versions(tmp_path):
    report = make_report()
    path = write_json(report, tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    assert data["format"] == "cvgen-eval" and data["format_version"] == 1
    assert data["results"][1]["metrics"][0]["per_frame"] == {"1001": 0.002, "1002": 0.0025, "1003": 0.003}
    back = read_json(path)
    assert back == report
    assert back.results[0].metrics[3].not_computed == NO_CLIP
    assert back.results[0].metrics[0].definition.startswith("Masked MSE")
    assert back.versions["opencv"] == "5.0.0"
    assert back.results[1].metrics[1].per_frame[1002] == 34.25


def test_json_keeps_an_infinite_psnr_rather_than_a_made_up_number(tmp_path):
    report = make_report()
    report.results[0].metrics[1] = Metric("interpolation_psnr", "Interpolation PSNR", "dB", "higher", "d",
                                          value=float("inf"), per_frame={1002: float("inf")})
    assert read_json(write_json(report, tmp_path / "r.json")).results[0].metrics[1].value == float("inf")


def test_reading_something_else_is_one_clear_error(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"frames": []}')
    with pytest.raises(InputError, match=r"other\.json: it is not a cvgen-eval JSON file"):
        read_json(other)
    other.write_text('{"format": "cvgen-eval", "format_version": 1, "frames": [1], "results": [{"label": "a"}]}')
    with pytest.raises(InputError, match=r"other\.json: it is damaged \(KeyError"):
        read_json(other)


def test_table_shows_every_result_and_metric_and_marks_not_computed():
    table = format_table(make_report())
    lines = table.splitlines()
    assert lines[0].split() == ["result", "warp_err", "interp_psnr", "clip_all", "clip_text"]
    assert lines[1].split() == ["lower", "dB", "higher", "higher", "higher"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:5]}
    assert rows["input"] == ["0.005", "30.75", "0.91", "n/c"]
    assert rows["colormatch"] == ["0.0025", "34", "0.95", "n/c"]
    assert "interp_psnr (interpolation_psnr): Interpolation PSNR" in lines
    # the shared reason is listed once, naming both results
    assert table.count(NO_CLIP) == 1
    assert f"  clip_text [input, colormatch]: {NO_CLIP}" in lines
    assert "on the source" in table


def test_table_lists_a_reason_shared_by_several_metrics_once():
    report = make_report()
    report.results[1].metrics[2] = Metric("clip_consistency_all", "CLIP frame consistency (all pairs)", "", "higher",
                                          "d", not_computed=NO_CLIP)
    lines = format_table(report).splitlines()
    assert lines[4].split()[3:] == ["n/c", "n/c"]
    assert f"  clip_text [input, colormatch]: {NO_CLIP}" in lines
    assert f"  clip_all [colormatch]: {NO_CLIP}" in lines
    report.results[0].metrics[2] = report.results[1].metrics[2]
    assert f"  clip_all, clip_text [input, colormatch]: {NO_CLIP}" in format_table(report).splitlines()


def test_table_without_missing_metrics_has_no_reason_list():
    report = make_report()
    for result in report.results:
        result.metrics.pop()
    table = format_table(report)
    assert "n/c" not in table


def test_table_names_the_models_and_flags_random_weights():
    report = make_report()
    assert "pickscore: tiny-pickscore\n" in format_table(report)  # a report written before the flag existed
    report.models["pickscore"]["random_weights"] = "yes"
    report.models["clip"] = {"name": "clip-l14", "path": "/models/clip", "fingerprint": "f", "random_weights": "no"}
    table = format_table(report)
    assert "pickscore: tiny-pickscore (random weights: plumbing only, not quality)" in table
    assert "clip: clip-l14\n" in table


def test_sheet_frames_spreads_over_the_shot():
    assert sheet_frames(list(range(1001, 1011)), 4) == [1001, 1004, 1007, 1010]
    assert sheet_frames([5, 6], 4) == [5, 6]


def images_of(page: str) -> dict[str, bytes]:
    """class -> PNG bytes of every embedded image."""
    found = re.findall(r"<img class='([^']+)' alt='[^']*' src='data:image/png;base64,([^']+)'>", page)
    return {css: base64.b64decode(data) for css, data in found}


def test_html_is_offline_with_a_plot_per_metric_and_a_contact_sheet(tmp_path):
    from PIL import Image as PILImage

    report = make_report()
    shown = [1001, 1004]
    red = np.zeros((16, 24, 3), np.float32)
    red[..., 0] = 1.0
    frames = {"input": [red, red * 0.5], "colormatch": [red, red]}
    path = write_html(report, html_path(tmp_path / "report.json"), frames, shown)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    assert not re.search(r"(https?:|ftp:|<script|<link|<iframe|url\()", page, re.IGNORECASE)
    references = re.findall(r"""(?:src|href)\s*=\s*['"]?([^'" >]*)""", page, re.IGNORECASE)
    assert references and all(ref.startswith("data:image/png;base64,") for ref in references)
    images = images_of(page)
    assert set(images) == {"plot plot-warp_error", "plot plot-interpolation_psnr", "plot plot-clip_consistency_all",
                           "contact-sheet"}
    for png in images.values():
        assert png.startswith(b"\x89PNG")
    # clip_text has no value anywhere: no plot, but its reason is on the page
    assert "plot-clip_text" not in page and NO_CLIP.replace('"', "&quot;") in page
    sheet = np.asarray(PILImage.open(io.BytesIO(images["contact-sheet"])).convert("RGB"))
    reds = (sheet[..., 0] > 200) & (sheet[..., 1] < 40) & (sheet[..., 2] < 40)
    dark_reds = (sheet[..., 0] > 100) & (sheet[..., 0] < 150) & (sheet[..., 1] < 40)
    assert reds.sum() == pytest.approx(3 * dark_reds.sum(), rel=0.1)    # three bright frames, one half-bright
    rows, cols = np.nonzero(dark_reds)    # the half-bright one is input's (first row) second frame (right column)
    assert rows.mean() < sheet.shape[0] / 2 < cols.mean()
    for label in ("input", "colormatch", "a red car", "OpenCV DIS", "tiny-pickscore", "torch 2.13.0"):
        assert label in page


def test_html_plot_draws_the_per_frame_values(tmp_path):
    """A plot is of the per-frame data: a result with a spike in one frame draws a different
    image from the same result without it."""
    def plot_of(values: list[float]) -> bytes:
        report = make_report()
        report.results = [SequenceResult("input", "x", [warp(values)])]
        page = write_html(report, tmp_path / "p.html", {}, []).read_text()
        return images_of(page)["plot plot-warp_error"]

    assert plot_of([0.004, 0.005, 0.006]) != plot_of([0.004, 0.05, 0.006])


def test_html_refuses_frames_that_do_not_match_their_numbers(tmp_path):
    with pytest.raises(InputError, match="contact sheet of input: 1 frame"):
        write_html(make_report(), tmp_path / "r.html", {"input": [np.zeros((4, 4, 3))]}, [1001, 1002])


# --- `cvgen eval` end to end -------------------------------------------------------------------

HAS_EVALUATE = importlib.util.find_spec("cvgen.server.eval") is not None and hasattr(
    importlib.import_module("cvgen.server.eval"), "evaluate")
needs_evaluate = pytest.mark.skipif(not HAS_EVALUATE, reason="cvgen.server.eval.evaluate is not written yet")


def write_sequence(pattern: Path, gains: list[float]) -> str:
    """A 32x32 smooth texture moving 1 px right per frame, frames 1001.., each scaled by its gain
    (scene-linear), so a sequence with unequal gains flickers and one with equal gains does not."""
    from cvgen.protocol.images import Image
    from cvgen.server.io.exr import write_exr

    y, x = np.mgrid[0:32, 0:48].astype(np.float32)
    texture = 0.18 + 0.12 * np.sin(x / 3.0) * np.cos(y / 4.0)
    pattern.parent.mkdir(parents=True, exist_ok=True)
    for i, gain in enumerate(gains):
        rgb = np.stack([texture[:, 8 - i: 40 - i] * c for c in (1.0, 0.8, 0.6)], axis=-1) * gain
        rgba = np.concatenate([rgb, np.ones((32, 32, 1), np.float32)], axis=-1).astype(np.float32)
        write_exr(str(pattern).replace("####", str(1001 + i)), Image(rgba, ("R", "G", "B", "A")))
    return str(pattern)


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from cvgen.server.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_evaluate
def test_cli_eval_compares_results_into_json_table_and_html(tmp_path, capsys):
    clean = write_sequence(tmp_path / "clean" / "shot.####.exr", [1.0, 1.0, 1.0, 1.0])
    flicker = write_sequence(tmp_path / "flicker" / "shot.####.exr", [1.0, 1.6, 0.7, 1.5])
    models = tmp_path / "models.toml"
    models.write_text("")
    out = tmp_path / "report" / "eval.json"
    code, stdout, stderr = run_cli("eval", clean, "--compare", flicker, "--label", "clean", "--label", "flicker",
                                   "--source", clean, "--frames", "1001-1004", "--models", str(models),
                                   "--out", str(out), capsys=capsys)
    assert code == 0, stderr
    report = read_json(out)
    assert [r.label for r in report.results] == ["clean", "flicker"]
    assert report.frames == [1001, 1002, 1003, 1004] and report.flow_on == "source"
    table = stdout.splitlines()
    assert table[0].startswith("result") and table[3].split()[0] == "clean" and table[4].split()[0] == "flicker"
    assert f"wrote {out} and {out.with_suffix('.html')}" in stdout
    warp_errors = {r.label: next(m for m in r.metrics if m.key == "warp_error") for r in report.results}
    assert warp_errors["flicker"].value > 10 * warp_errors["clean"].value
    assert set(warp_errors["flicker"].per_frame) <= {1001, 1002, 1003, 1004}
    for result in report.results:    # every metric is a number or says why not, and the table agrees
        for metric in result.metrics:
            assert (metric.value is None) == (metric.not_computed is not None), metric.key
            if metric.not_computed:
                assert metric.not_computed in stdout
    page = out.with_suffix(".html").read_text()
    assert "contact-sheet" in page and "plot-warp_error" in page


@needs_evaluate
def test_cli_eval_bad_input_is_one_clear_sentence(tmp_path, capsys):
    clean = write_sequence(tmp_path / "shot.####.exr", [1.0, 1.0, 1.0])
    code, _, stderr = run_cli("eval", clean, "--frames", "1001-1005", "--out", str(tmp_path / "r.json"),
                              capsys=capsys)
    assert code == 1 and "1004" in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_cli_eval_wants_a_json_report_name(tmp_path, capsys):
    code, _, stderr = run_cli("eval", str(tmp_path / "x.####.exr"), "--out", str(tmp_path / "r.html"), capsys=capsys)
    assert code == 1 and "give it a .json suffix" in stderr and "Traceback" not in stderr


def test_contact_sheet_of_a_video_takes_frames_by_their_place_in_the_range(tmp_path):
    """A video has no frame numbers: frame 1003 of a range starting at 1001 is its third frame."""
    import av

    from cvgen.server.cli import contact_sheet_frames

    path = tmp_path / "ramp.mp4"
    levels = [30, 60, 90, 120, 150, 180]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "0"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv444p"
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), level, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    frames = list(range(1001, 1007))
    images = contact_sheet_frames(str(path), frames, [1001, 1003, 1006], "Linear Rec.709 (sRGB)", "ramp")
    assert [round(float(image.mean()) * 255) for image in images] == pytest.approx([30, 90, 180], abs=2)
