"""Reports of an evaluation: a JSON file machines re-read, a terminal table people skim, and an
HTML page beside the JSON with per-frame plots and a contact sheet, readable offline on a
workstation with no network (every image is embedded as a data: URI)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import InputError
from .results import EvalReport, Metric, SequenceResult

#: Written into every JSON report, so a reader can tell which layout it holds.
FORMAT = "cvgen-eval"
FORMAT_VERSION = 1

#: How a metric without a value reads in the table.
NOT_COMPUTED = "n/c"


def write_json(report: EvalReport, path: str | os.PathLike[str]) -> Path:
    """Write the whole report (per-frame and aggregate values, definitions, flow method, models,
    versions) with a format version, so later tools can compare runs without re-evaluating.
    A non-finite value (an uncapped PSNR of identical frames) is written as Python's JSON writes
    it, `Infinity`, which `read_json` reads back unchanged."""
    target = Path(path)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **report.to_dict()}
    _write_text(target, json.dumps(data, indent=2) + "\n")
    return target


def read_json(path: str | os.PathLike[str]) -> EvalReport:
    """Read a report `write_json` wrote; JSON object keys are strings, so per-frame keys become
    host frame numbers (int) again."""
    shown = os.fspath(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read evaluation report {shown}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"cannot read evaluation report {shown}: it is not a {FORMAT} JSON file")
    if data.get("format_version") != FORMAT_VERSION:
        raise InputError(f"cannot read evaluation report {shown}: format version {data.get('format_version')!r} "
                         f"is not {FORMAT_VERSION}")
    fields = {k: v for k, v in data.items() if k not in ("format", "format_version", "results")}
    try:
        results = [SequenceResult(label=r["label"], path=r["path"], metrics=[_metric(m) for m in r["metrics"]])
                   for r in data["results"]]
        return EvalReport(**fields, results=results)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot read evaluation report {shown}: it is damaged "
                         f"({type(exc).__name__}: {exc})") from None


def _metric(data: dict[str, Any]) -> Metric:
    per_frame = {int(frame): float(value) for frame, value in data["per_frame"].items()}
    return Metric(**{**data, "per_frame": per_frame})


def metric_columns(report: EvalReport) -> list[Metric]:
    """One Metric per key, in the order results first list them: the columns every view shares
    (the first result's Metric stands for its label, unit, direction and definition)."""
    seen: dict[str, Metric] = {}
    for result in report.results:
        for metric in result.metrics:
            seen.setdefault(metric.key, metric)
    return list(seen.values())


def format_value(metric: Metric | None) -> str:
    """A value as the table shows it: four significant digits, `n/c` when not computed."""
    if metric is None or metric.value is None:
        return NOT_COMPUTED
    return f"{metric.value:.4g}"


#: Column names short enough for eleven metrics to fit a terminal; the legend under the table
#: gives each one's label and JSON key. A key not listed here is its own column name.
SHORT_NAMES = {
    "clip_consistency_all": "clip_all",
    "clip_consistency_consecutive": "clip_consec",
    "clip_text": "clip_text",
    "pickscore": "pickscore",
    "warp_error": "warp_err",
    "interpolation_error": "interp_err",
    "interpolation_psnr": "interp_psnr",
    "harmonization_mse": "mse",
    "harmonization_fmse": "fmse",
    "harmonization_psnr": "harm_psnr",
    "flicker_stops": "flicker",
}


def format_table(report: EvalReport) -> str:
    """One row per result, one column per metric (a short name over its unit and which way is
    better), then a legend of the short names and why any `n/c` cell was not computed."""
    columns = metric_columns(report)
    names = ["result"] + [SHORT_NAMES.get(m.key, m.key) for m in columns]
    directions = [""] + [f"{m.unit} {m.better}".strip() for m in columns]
    rows = [[r.label] + [format_value(_find(r, m.key)) for m in columns] for r in report.results]
    widths = [max(len(line[i]) for line in [names, directions, *rows]) for i in range(len(names))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])]).rstrip()

    out = [line(names), line(directions), line(["-" * w for w in widths]), *(line(row) for row in rows), ""]
    out += [f"{SHORT_NAMES.get(m.key, m.key)} ({m.key}): {m.label}" for m in columns]
    out.append(f"flow: {report.flow_method}, on the {report.flow_on}"
               + ("" if report.flow_on == "source" else " (no source given)"))
    for kind, info in report.models.items():
        if info:
            warning = info.get("random_weights") == "yes"
            out.append(f"{kind}: {info['name']}" + (" (random weights: plumbing only, not quality)" if warning else ""))
    reasons = _not_computed(report)
    if reasons:
        out += ["", "n/c = not computed:"]
        out += [f"  {', '.join(SHORT_NAMES.get(k, k) for k in keys)} [{', '.join(labels)}]: {reason}"
                for keys, labels, reason in reasons]
    return "\n".join(out) + "\n"


def _find(result: SequenceResult, key: str) -> Metric | None:
    return next((m for m in result.metrics if m.key == key), None)


def _not_computed(report: EvalReport) -> list[tuple[list[str], list[str], str]]:
    """(metric keys, result labels, reason) for every missing value, grouped so that one reason
    (no CLIP model: four metrics of every result) is listed once, not once per cell."""
    by_cell: dict[tuple[str, str], list[str]] = {}
    for result in report.results:
        for metric in result.metrics:
            if metric.value is None:
                reason = metric.not_computed or "no reason given"
                by_cell.setdefault((metric.key, reason), []).append(result.label)
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (key, reason), labels in by_cell.items():
        grouped.setdefault((reason, tuple(labels)), []).append(key)
    return [(keys, list(labels), reason) for (reason, labels), keys in grouped.items()]


def sheet_frames(frames: list[int], count: int = 4) -> list[int]:
    """Up to `count` evenly spaced host frames, first and last included: enough to see a look
    drift over the shot without making the contact sheet a film strip."""
    if len(frames) <= count:
        return list(frames)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in picks]


def html_path(json_path: str | os.PathLike[str]) -> Path:
    """Where the HTML page of a JSON report goes: beside it, same stem."""
    return Path(json_path).with_suffix(".html")


def write_html(
    report: EvalReport,
    path: str | os.PathLike[str],
    frames: dict[str, list[np.ndarray]],
    frame_numbers: list[int],
) -> Path:
    """Write the HTML page: the summary table, the run's settings, one per-frame plot per metric
    and a contact sheet. `frames` maps a result's label to its display-referred RGB frames
    (float in [0, 1], H x W x 3), one per entry of `frame_numbers`; the caller reads them, so
    this module needs no sequence reader."""
    for label, images in frames.items():
        if len(images) != len(frame_numbers):
            raise InputError(f"contact sheet of {label}: {len(images)} frame(s) given for "
                             f"{len(frame_numbers)} frame number(s)")
    columns = metric_columns(report)
    parts = [_HEAD.format(title=html.escape(f"cvgen eval: {', '.join(r.label for r in report.results)}")),
             "<h1>cvgen eval</h1>", _settings_html(report), "<h2>Summary</h2>", _table_html(report, columns)]
    parts.append("<h2>Per frame</h2>")
    for metric in columns:
        parts.append(_plot_html(report, metric))
    if frames:
        parts += ["<h2>Contact sheet</h2>",
                  f"<p>Display-referred ({html.escape(report.display)}), frames "
                  f"{', '.join(str(f) for f in frame_numbers)}.</p>",
                  _img(_contact_sheet(frames, frame_numbers), "contact sheet", "contact-sheet")]
    parts.append("</body></html>\n")
    target = Path(path)
    _write_text(target, "\n".join(parts))
    return target


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.nc {{ text-align: right; color: #a33; }}
img {{ max-width: 100%; }}
</style></head><body>"""


def _settings_html(report: EvalReport) -> str:
    flow = f"{report.flow_method}, computed on the {report.flow_on}"
    if report.flow_on != "source":
        flow += " (no source sequence given)"
    models = {kind: (f"{m['name']} ({m['path']}, fingerprint {m['fingerprint']})" if m else "not configured")
              for kind, m in report.models.items()}
    rows = [("frames", _frame_span(report.frames)), ("prompt", report.prompt or "(none)"),
            ("source", report.source or "(none)"), ("flow", flow), ("colour space", report.colorspace),
            ("metrics see", report.display), *(("model: " + k, v) for k, v in models.items()),
            ("versions", ", ".join(f"{k} {v}" for k, v in report.versions.items()))]
    rows += [(f"result: {r.label}", r.path) for r in report.results]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='settings'>{body}</table>"


def _frame_span(frames: list[int]) -> str:
    if not frames:
        return "(none)"
    return f"{frames[0]}-{frames[-1]} ({len(frames)} frames)"


def _table_html(report: EvalReport, columns: list[Metric]) -> str:
    head = "".join(f"<th title='{html.escape(m.definition)}'>{html.escape(m.label)}"
                   f"{' (' + html.escape(m.unit) + ')' if m.unit else ''}<br><small>{m.better} is better</small></th>"
                   for m in columns)
    rows = []
    for result in report.results:
        cells = []
        for column in columns:
            metric = _find(result, column.key)
            if metric is None or metric.value is None:
                cells.append(f"<td class='nc'>{NOT_COMPUTED}</td>")
            else:
                cells.append(f"<td class='num'>{format_value(metric)}</td>")
        rows.append(f"<tr><th>{html.escape(result.label)}</th>{''.join(cells)}</tr>")
    table = f"<table class='summary'><tr><th>result</th>{head}</tr>{''.join(rows)}</table>"
    definitions = "".join(f"<dt>{html.escape(m.label)} (<code>{m.key}</code>)</dt><dd>{html.escape(m.definition)}</dd>"
                          for m in columns)
    reasons = _not_computed(report)
    notes = ""
    if reasons:
        items = "".join(f"<li>{', '.join(f'<code>{html.escape(k)}</code>' for k in keys)} "
                        f"[{html.escape(', '.join(labels))}]: {html.escape(reason)}</li>"
                        for keys, labels, reason in reasons)
        notes = f"<p>{NOT_COMPUTED} = not computed:</p><ul class='not-computed'>{items}</ul>"
    return f"{table}{notes}<dl>{definitions}</dl>"


def _plot_html(report: EvalReport, metric: Metric) -> str:
    """One figure per metric: a line per result over host frames, or, for a metric with only an
    aggregate (all-pairs consistency has no frame of its own), a bar per result."""
    series = [(r.label, _find(r, metric.key)) for r in report.results]
    computed = [(label, m, m.value) for label, m in series if m is not None and m.value is not None]
    title = metric.label + (f" ({metric.unit})" if metric.unit else "") + f", {metric.better} is better"
    if not computed:
        return (f"<h3>{html.escape(title)}</h3><p class='not-computed'>{NOT_COMPUTED}: not computed for any result "
                "(reasons above).</p>")
    figure = Figure(figsize=(7, 2.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if any(m.per_frame for _, m, _ in computed):
        for label, m, value in computed:
            frames = sorted(m.per_frame)
            axes.plot(frames, [m.per_frame[f] for f in frames], marker=".", label=f"{label} (mean {value:.4g})")
        axes.set_xlabel("frame")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.ticklabel_format(axis="x", useOffset=False, style="plain")
        axes.legend(fontsize="small")
    else:
        axes.bar([label for label, _, _ in computed], [value for _, _, value in computed])
    axes.set_ylabel(metric.unit or metric.key)
    axes.grid(alpha=0.3)
    return (f"<h3>{html.escape(title)}</h3>"
            + _img(_png(figure), f"per-frame plot of {metric.key}", f"plot plot-{metric.key}"))


def _contact_sheet(frames: dict[str, list[np.ndarray]], frame_numbers: list[int]) -> bytes:
    """A grid, one row per result and one column per frame, so the same frame of every result
    sits in one column."""
    rows, cols = len(frames), max(len(frame_numbers), 1)
    first = next((images[0] for images in frames.values() if images), np.zeros((1, 1, 3)))
    aspect = first.shape[0] / first.shape[1]
    figure = Figure(figsize=(2.2 * cols, (2.2 * aspect + 0.3) * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, cols, squeeze=False)
    for row, (label, images) in enumerate(frames.items()):
        for col, image in enumerate(images):
            axes = grid[row][col]
            axes.imshow(np.clip(np.asarray(image, dtype=np.float32)[..., :3], 0.0, 1.0), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(str(frame_numbers[col]), fontsize="small")
            if col == 0:
                axes.set_ylabel(label, fontsize="small")
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _img(png: bytes, alt: str, css: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img class='{css}' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write report {path}: {exc.strerror or exc}") from None
