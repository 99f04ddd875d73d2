"""HTML reports to look at rather than read: one self-contained page per video, one for a set of photos.

A video page shows, per tracked face, its thumbnail, an emotion timeline
over the whole video (the probabilities stacked as an SVG area chart, empty
where the face is out of view) and the share of time in each emotion, then a
summary table of all tracks. A photo page shows how many faces showed each
emotion and a grid of the faces under each emotion. Charts are SVG written
here and images are embedded as base64 JPEG, so a page needs no network, no
JavaScript and no Matplotlib; each emotion keeps one colour everywhere.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from emorec.files import OUTPUT_MARK, atomic_write_text, check_targets

# Colours people tend to read into emotions; the same in every chart and legend of a page.
EMOTION_COLOURS = {
    "angry": "#d64545", "disgust": "#7a9a32", "fear": "#8e5cc2", "happy": "#f2b705",
    "sad": "#3d7cc9", "surprise": "#f08a24", "neutral": "#9aa3ad", "contempt": "#b5651d",
}
SPARE_COLOURS = ("#2bb3a3", "#d45fa0", "#5c6bc0", "#8d6e63", "#26a69a", "#c0ca33")
TIMELINE_WIDTH, TIMELINE_HEIGHT = 760, 84
MAX_STEPS = 600  # points per timeline: a long video is averaged into this many steps
FACES_PER_EMOTION = 48  # photo page: faces shown under each emotion (the count says how many there are)
FACE_SIZE = 96
# The page may load nothing: no script, no font, no image that is not inside it.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def report_path(folder: str | Path, stem: str | Path) -> Path:
    """Where a report goes: folder/<stem>.html (stem may keep sub-folders, as videos below a folder source do)."""
    return Path(folder) / f"{stem}.html"


def write_report(path: str | Path, page: str, exist_ok: bool = False) -> Path:
    """Write an HTML page atomically; an existing file is replaced only with exist_ok and only if emorec wrote it
    (`files.check_targets`)."""
    path = Path(path)
    check_targets([path], exist_ok)
    return atomic_write_text(path, page)


# ----------------------------------------------------------------------------
# A video: one section per track
# ----------------------------------------------------------------------------


def video_report(source: str | Path, tracks: Sequence[Any], class_names: Sequence[str], fps: float,
                 duration: float, model: str = "") -> str:
    """The HTML page of a video's tracks (emorec.results.Track: VideoAnalysis.tracks, VideoSummary.tracks)."""
    colours = emotion_colours(class_names)
    people = f"{len(tracks)} {'person' if len(tracks) == 1 else 'people'} tracked"
    facts = [f"{format_time(duration)} long", f"{fps:g} fps", people] + ([f"model {model}"] if model else [])
    sections = [track_section(track, class_names, colours, float(duration)) for track in tracks]
    body = [
        header(Path(str(source)).name, facts),
        legend(class_names, colours),
        summary_table(tracks, class_names, colours),
        *(sections or ['<p class="empty">No face was found in this video.</p>']),
    ]
    return page(f"Emotions in {Path(str(source)).name}", body)


def track_section(track: Any, class_names: Sequence[str], colours: dict[str, str], duration: float) -> str:
    """One track: thumbnail and facts, its timeline over the video, its share of time per emotion."""
    facts = (f"{format_time(track.first_time)} to {format_time(track.last_time)} · {track.frames} frames · "
             f"mostly <b style=\"color:{colours.get(track.dominant, '#333')}\">{escape(track.dominant)}</b>")
    return (
        f'<section class="track" id="track-{escape(track.id)}" data-track="{escape(track.id)}">'
        f'<div class="who">{thumbnail_img(track.thumbnail, f"face of track {track.id}")}'
        f'<div><h2>Person #{escape(track.id)}</h2><p class="facts">{facts}</p></div></div>'
        f'<div class="charts"><figure><figcaption>Emotions over the video</figcaption>'
        f'{timeline_svg(track.times, track.probabilities, class_names, colours, duration)}</figure>'
        f'<figure><figcaption>Share of time</figcaption>{share_bars(track.time_share, class_names, colours)}</figure>'
        f"</div></section>"
    )


def summary_table(tracks: Sequence[Any], class_names: Sequence[str], colours: dict[str, str]) -> str:
    """All tracks in one table: id, first and last time, frames, dominant emotion, share of time."""
    rows = "".join(
        f'<tr><td><a href="#track-{escape(t.id)}">#{escape(t.id)}</a></td><td>{format_time(t.first_time)}</td>'
        f"<td>{format_time(t.last_time)}</td><td>{t.frames}</td><td>{chip(t.dominant, colours)}</td>"
        f"<td>{share_strip(t.time_share, class_names, colours)}</td></tr>"
        for t in tracks
    )
    return ('<table class="summary"><thead><tr><th>Person</th><th>First seen</th><th>Last seen</th><th>Frames</th>'
            f"<th>Mostly</th><th>Share of time</th></tr></thead><tbody>{rows}</tbody></table>")


def timeline_svg(times: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
                 colours: dict[str, str], duration: float) -> str:
    """Probabilities stacked over time as an SVG area chart spanning the whole video.

    Each sample holds until the next one; gaps (the face out of view) stay
    empty. Long tracks are averaged into at most MAX_STEPS steps.
    """
    times, probabilities = np.asarray(times, float), np.asarray(probabilities, float)
    span = max(duration, float(times.max()) if times.size else 0.0, 1e-6)
    steps = timeline_steps(times, probabilities, span)
    x = lambda t: TIMELINE_WIDTH * min(max(t / span, 0.0), 1.0)  # noqa: E731 (a scale, used inline)
    paths = []
    for start, end, probs in steps:
        top = np.cumsum(probs, axis=1) * TIMELINE_HEIGHT
        for k, name in enumerate(class_names):
            upper = top[:, k]
            lower = top[:, k - 1] if k else np.zeros(len(probs))
            outline = _step_outline(start, end, upper, lower, x)
            paths.append(f'<path class="area" data-emotion="{escape(name)}" fill="{colours[name]}" d="{outline}"/>')
    return (f'<svg class="timeline" viewBox="0 -2 {TIMELINE_WIDTH} {TIMELINE_HEIGHT + 20}" role="img" '
            f'aria-label="emotions over time">'
            f'<rect class="absent" x="0" y="0" width="{TIMELINE_WIDTH}" height="{TIMELINE_HEIGHT}"/>'
            f"{''.join(paths)}{time_axis(span, x)}</svg>")


Steps = tuple[np.ndarray, np.ndarray, np.ndarray]  # start times, end times, probabilities (one row per step)


def timeline_steps(times: np.ndarray, probabilities: np.ndarray, span: float) -> list[Steps]:
    """(start times, end times, probabilities) per run of samples without a gap, averaged to fit MAX_STEPS."""
    if times.size == 0:
        return []
    order = np.argsort(times)
    times, probabilities = times[order], probabilities[order]
    gaps = np.diff(times)
    typical = float(np.median(gaps)) if gaps.size else span / MAX_STEPS
    breaks = np.flatnonzero(gaps > max(3 * typical, 0.5)) + 1  # a gap well beyond the sampling step: out of view
    runs = []
    for run_times, run_probs in zip(np.split(times, breaks), np.split(probabilities, breaks)):
        ends = np.append(run_times[1:], run_times[-1] + typical)
        bins = max(1, int(np.ceil(MAX_STEPS * (ends[-1] - run_times[0]) / span)))
        if len(run_times) > bins:
            run_times, ends, run_probs = _average(run_times, ends, run_probs, bins)
        runs.append((run_times, ends, run_probs))
    return runs


def _average(starts: np.ndarray, ends: np.ndarray, probs: np.ndarray, bins: int):
    groups = np.array_split(np.arange(len(starts)), bins)
    return (np.array([starts[g[0]] for g in groups]), np.array([ends[g[-1]] for g in groups]),
            np.stack([probs[g].mean(axis=0) for g in groups]))


def _step_outline(starts, ends, upper, lower, x) -> str:
    forward = [f"{x(s):.1f},{TIMELINE_HEIGHT - u:.1f} {x(e):.1f},{TIMELINE_HEIGHT - u:.1f}"
               for s, e, u in zip(starts, ends, upper)]
    backward = [f"{x(e):.1f},{TIMELINE_HEIGHT - v:.1f} {x(s):.1f},{TIMELINE_HEIGHT - v:.1f}"
                for s, e, v in zip(starts[::-1], ends[::-1], lower[::-1])]
    return "M" + " ".join(forward + backward) + "Z"


def time_axis(span: float, x) -> str:
    """Tick marks and labels under a timeline: about six round times."""
    step = next(s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 1e9) if span / s <= 8)
    ticks = np.arange(0, span + 1e-9, step)
    marks = "".join(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TIMELINE_HEIGHT}" y2="{TIMELINE_HEIGHT + 4}"/>'
                    f'<text x="{x(t):.1f}" y="{TIMELINE_HEIGHT + 15}" text-anchor="{_anchor(t, span)}">'
                    f"{format_time(t)}</text>" for t in ticks)
    return f'<g class="axis">{marks}</g>'


def _anchor(t: float, span: float) -> str:
    return "start" if t == 0 else "end" if t > span * 0.97 else "middle"


# ----------------------------------------------------------------------------
# Photos: the distribution and the faces under each emotion
# ----------------------------------------------------------------------------


def photos_report(results: Sequence[Any], class_names: Sequence[str], title: str = "photos", model: str = "") -> str:
    """The HTML page of photo results (ImageResult): faces per emotion as bars and a grid of the faces."""
    colours = emotion_colours(class_names)
    faces = [(result, face) for result in results if result.video is None and not result.error for face in result.faces]
    counts = {name: sum(face.emotion == name for _, face in faces) for name in class_names}
    failed = sum(1 for result in results if result.error)
    facts = [f"{sum(r.video is None for r in results)} photos", f"{len(faces)} faces"]
    facts += ([f"{failed} unreadable"] if failed else []) + ([f"model {model}"] if model else [])
    grids = [emotion_grid(name, [pair for pair in faces if pair[1].emotion == name], colours) for name in class_names]
    body = [header(title, facts), legend(class_names, colours),
            f'<section class="distribution"><h2>Faces per emotion</h2>{count_bars(counts, colours, bar_width=420)}</section>',
            *[grid for grid in grids if grid]]
    return page(f"Emotions in {title}", body)


def emotion_grid(name: str, pairs: Sequence[tuple[Any, Any]], colours: dict[str, str]) -> str:
    """The faces classified as one emotion, most confident first ("" when there are none)."""
    if not pairs:
        return ""
    ranked = sorted(pairs, key=lambda pair: -pair[1].confidence)[:FACES_PER_EMOTION]
    cells = "".join(face_cell(result.source, face) for result, face in ranked)
    hidden = len(pairs) - len(ranked)
    more = f' <span class="muted">({hidden} more not shown)</span>' if hidden else ""
    return (f'<section class="grid" data-emotion="{escape(name)}" style="--emotion:{colours[name]}">'
            f"<h2>{chip(name, colours)} {len(pairs)} face{'s' * (len(pairs) != 1)}{more}</h2>"
            f'<div class="faces">{cells}</div></section>')


def face_cell(source: str, face: Any) -> str:
    """One face cropped from its photo, with its file name and confidence."""
    crop = crop_face(source, face.box)
    label = f"{Path(source).name} · {face.confidence:.0%}"
    return (f'<figure title="{escape(source)}">{thumbnail_img(crop, label)}'
            f"<figcaption>{escape(label)}</figcaption></figure>")


def crop_face(source: str, box: Sequence[int] | None) -> np.ndarray | None:
    """A face of a photo framed as the model sees it, in colour (BGR); the whole photo when box is None;
    None if the photo cannot be read."""
    from emorec.images import ImageReadError, read_image
    from emorec.faces import Face, crop_face as frame_face

    try:
        image = read_image(source, reduce=True)
    except (ImageReadError, ValueError, OSError):
        return None
    if box is None:
        return image
    return frame_face(image, Face(tuple(box), 1.0), size=FACE_SIZE, grayscale=False)[..., ::-1]


# ----------------------------------------------------------------------------
# Pieces shared by both pages
# ----------------------------------------------------------------------------


def emotion_colours(class_names: Iterable[str]) -> dict[str, str]:
    """One colour per class: the usual one for known emotions, distinct spares for others."""
    spares = iter(SPARE_COLOURS * 4)
    return {name: EMOTION_COLOURS.get(name.lower()) or next(spares, "#777777") for name in class_names}


def share_bars(shares: dict[str, float], class_names: Sequence[str], colours: dict[str, str]) -> str:
    """Horizontal bars, one per emotion, for shares that sum to 1."""
    return count_bars({name: shares.get(name, 0.0) for name in class_names}, colours, percent=True)


def count_bars(values: dict[str, float], colours: dict[str, str], percent: bool = False, bar_width: int = 200) -> str:
    """An SVG bar chart, one row per emotion: shares on a 0-100% scale, counts scaled to the largest."""
    row, label_width = 20, 74
    largest = max(max(values.values(), default=0), 1e-9)
    rows = []
    for i, (name, value) in enumerate(values.items()):
        width = bar_width * value / largest if not percent else bar_width * value
        text = f"{value:.0%}" if percent else f"{value:g}"
        y = i * row
        rows.append(f'<g class="bar" data-emotion="{escape(name)}"><text x="{label_width - 6}" y="{y + 14}" '
                    f'text-anchor="end">{escape(name)}</text><rect class="bg" x="{label_width}" y="{y + 4}" '
                    f'width="{bar_width}" height="12" rx="3"/><rect x="{label_width}" y="{y + 4}" width="{width:.1f}" '
                    f'height="12" rx="3" fill="{colours[name]}"/><text x="{label_width + bar_width + 6}" y="{y + 14}">'
                    f"{text}</text></g>")
    width, height = label_width + bar_width + 44, row * len(values)
    return (f'<svg class="bars" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="share per emotion">{"".join(rows)}</svg>')


def share_strip(shares: dict[str, float], class_names: Sequence[str], colours: dict[str, str]) -> str:
    """A one-line stacked bar of time shares with the leading emotion named, for the summary table."""
    left, parts = 0.0, []
    for name in class_names:
        width = 120 * shares.get(name, 0.0)
        if width > 0:
            parts.append(f'<rect x="{left:.1f}" y="0" width="{width:.1f}" height="12" fill="{colours[name]}">'
                         f"<title>{escape(name)} {shares.get(name, 0.0):.0%}</title></rect>")
        left += width
    top = max(class_names, key=lambda name: shares.get(name, 0.0))
    return (f'<svg class="strip" viewBox="0 0 120 12" width="120" height="12">{"".join(parts)}</svg> '
            f'<span class="muted">{escape(top)} {shares.get(top, 0.0):.0%}</span>')


def thumbnail_img(image: np.ndarray | None, alt: str) -> str:
    """An <img> with the image embedded as base64 JPEG (a grey square when there is no image)."""
    if image is None or getattr(image, "size", 0) == 0:
        image = np.full((FACE_SIZE, FACE_SIZE, 3), 200, np.uint8)
    scale = FACE_SIZE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    data = base64.b64encode(encoded.tobytes()).decode("ascii") if ok else ""
    return f'<img class="face" src="data:image/jpeg;base64,{data}" alt="{escape(alt)}">'


def legend(class_names: Sequence[str], colours: dict[str, str]) -> str:
    """The colour of each emotion, in class order."""
    return '<p class="legend">' + "".join(chip(name, colours) for name in class_names) + "</p>"


def chip(name: str, colours: dict[str, str]) -> str:
    """An emotion name on a swatch of its colour."""
    return f'<span class="chip"><i style="background:{colours.get(name, "#777")}"></i>{escape(name)}</span>'


def header(title: str, facts: Sequence[str]) -> str:
    """The page heading: what was analysed and the facts about it."""
    return f'<header><h1>{escape(title)}</h1><p class="muted">{" · ".join(map(escape, facts))}</p></header>'


def format_time(seconds: float) -> str:
    """0:07.5 under a minute (0:05 for whole seconds), m:ss above, h:mm:ss for long videos."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60 and seconds == int(seconds):
        return f"0:{int(seconds):02d}"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"0:{seconds:04.1f}"


def escape(value: Any) -> str:
    """Text safe inside HTML and attribute values."""
    return html.escape(str(value), quote=True)


def page(title: str, body: Sequence[str]) -> str:
    """A complete HTML document with the report's styles inline."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{OUTPUT_MARK.decode()}">'  # so --exist-ok may replace it later
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>{''.join(body)}"
            f'<footer class="muted">Made by emorec. Probabilities are the model\'s reading of each face, not a '
            f"diagnosis.</footer></main></body></html>\n")


STYLE = """
:root { --ink: #1d2330; --muted: #6b7280; --line: #e3e6eb; --bg: #f6f7f9; font-family: system-ui, -apple-system,
  "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
body { margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 1.2rem 1.5rem 2rem; }
header h1 { margin: 0 0 .2rem; font-size: 1.5rem; word-break: break-all; }
.muted { color: var(--muted); font-size: .88rem; }
.legend { display: flex; flex-wrap: wrap; gap: .4rem .9rem; margin: .8rem 0 1rem; }
.chip { display: inline-flex; align-items: center; gap: .35rem; font-size: .88rem; text-transform: capitalize; }
.chip i { width: .85rem; height: .85rem; border-radius: 3px; display: inline-block; }
table.summary { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line);
  border-radius: 10px; overflow: hidden; margin-bottom: 1.2rem; font-size: .9rem; }
.summary th, .summary td { text-align: left; padding: .45rem .7rem; border-bottom: 1px solid var(--line); }
.summary th { font-size: .75rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
.summary a { color: inherit; font-weight: 600; }
section.track, section.distribution, section.grid { background: #fff; border: 1px solid var(--line);
  border-radius: 12px; padding: 1rem 1.2rem; margin-bottom: 1rem; }
.who { display: flex; gap: 1rem; align-items: center; }
.who h2 { margin: 0; font-size: 1.15rem; }
.facts { margin: .2rem 0 0; color: var(--muted); }
img.face { width: 72px; height: 72px; object-fit: cover; border-radius: 10px; background: #ddd; }
.charts { display: grid; grid-template-columns: minmax(0, 1fr) 330px; gap: 1.2rem; margin-top: .6rem; }
@media (max-width: 900px) { .charts { grid-template-columns: 1fr; } }
figure { margin: 0; }
figcaption { font-size: .75rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
  margin-bottom: .3rem; }
svg.timeline { width: 100%; height: auto; display: block; }
svg.timeline .absent { fill: #f0f1f4; }
svg .axis line { stroke: #9aa3ad; } svg .axis text, svg.bars text { font-size: 11px; fill: var(--muted); }
svg.bars { display: block; max-width: 100%; height: auto; } svg.bars .bg { fill: #f0f1f4; }
svg.bars text { fill: var(--ink); font-size: 12px; }
svg.strip { vertical-align: middle; background: #f0f1f4; border-radius: 3px; }
section.grid { border-top: 4px solid var(--emotion); }
section.grid h2, section.distribution h2 { margin: 0 0 .6rem; font-size: 1rem; display: flex; gap: .5rem;
  align-items: center; }
.faces { display: grid; grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)); gap: .6rem; }
.faces figure { text-align: center; } .faces img.face { width: 96px; height: 96px; }
.faces figcaption { text-transform: none; letter-spacing: 0; font-size: .72rem; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
footer { margin-top: 1.5rem; }
.empty { background: #fff; border: 1px dashed var(--line); border-radius: 12px; padding: 2rem; text-align: center; }
"""
