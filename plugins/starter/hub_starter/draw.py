"""Pictures of the starter pack: thumbnails per modality, retrieval grids and query answers as PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hub.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .pack import StarterPack

CELL = 96


def _render_image(item: Any, size: int) -> "Image.Image":
    return item.convert("RGB").resize((size, size), 0)  # nearest: keep the digit's pixels visible


def _render_audio(item: Any, size: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    wave = np.asarray(item["array"], dtype=np.float32)
    img = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    cols = np.array_split(wave, size)
    peak = max(float(np.abs(wave).max()), 1e-6)
    mid = size // 2
    for x, col in enumerate(cols):
        if col.size:
            lo, hi = float(col.min()) / peak, float(col.max()) / peak
            draw.line([(x, mid - hi * (size * 0.4)), (x, mid - lo * (size * 0.4))], fill=(40, 90, 170))
    return img


def _render_graph(item: Any, size: int) -> "Image.Image":
    import networkx as nx
    from PIL import Image, ImageDraw

    pos = nx.spring_layout(item, seed=0)
    xy = np.array([pos[n] for n in item.nodes()])
    lo, hi = xy.min(0), xy.max(0)
    scaled = {n: tuple((8 + (p - lo) / np.maximum(hi - lo, 1e-6) * (size - 16)).tolist()) for n, p in pos.items()}
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for a, b in item.edges():
        draw.line([scaled[a], scaled[b]], fill=(120, 120, 120))
    for x, y in scaled.values():
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(200, 60, 40))
    return img


def _render_points(item: Any, size: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    pts = np.asarray(item, dtype=np.float32)[:, :3]
    pts = pts - pts.mean(0)
    pts = pts / max(float(np.abs(pts).max()), 1e-6)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for x, y, z in pts[np.argsort(pts[:, 2])]:  # far first, near drawn over
        shade = int(200 - 80 * (z + 1))
        px, py = (x + 1) / 2 * (size - 8) + 4, (1 - (y + 1) / 2) * (size - 8) + 4
        draw.point((px, py), fill=(shade, shade, 255 if shade < 200 else 200))
    return img


#: modality → thumbnail renderer ``(item, size) -> PIL image``
RENDERERS: dict[str, Callable[[Any, int], "Image.Image"]] = {
    "image": _render_image, "audio": _render_audio, "graph": _render_graph, "3d": _render_points,
}


def render_item(modality: str, item: Any, size: int = CELL) -> "Image.Image":
    """A ``size`` x ``size`` thumbnail of ``item``: the image, a waveform, a drawn graph, projected points."""
    if modality not in RENDERERS:
        raise InvalidInputError(f"no thumbnail renderer for {modality!r}; renderers: {', '.join(RENDERERS)}")
    return RENDERERS[modality](item, size)


def _label(img: "Image.Image", text: str, colour: tuple[int, int, int] = (0, 0, 0)) -> "Image.Image":
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (img.width, img.height + 16), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((2, img.height + 2), text[:18], fill=colour)
    return out


def _frame(img: "Image.Image", colour: tuple[int, int, int]) -> "Image.Image":
    from PIL import ImageOps

    return ImageOps.expand(img, border=3, fill=colour)


def _grid(rows: list[list["Image.Image"]], path: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    w = max(sum(c.width for c in r) + 6 * (len(r) - 1) for r in rows)
    h = sum(max(c.height for c in r) for r in rows) + 6 * len(rows) + 20
    canvas = Image.new("RGB", (w + 12, h + 6), "white")
    ImageDraw.Draw(canvas).text((6, 4), title, fill=(0, 0, 0))
    y = 24
    for r in rows:
        x = 6
        for c in r:
            canvas.paste(c, (x, y))
            x += c.width + 6
        y += max(c.height for c in r) + 6
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def draw_retrieval(pack: StarterPack, source: str, target: str, top: np.ndarray, path: str | os.PathLike,
                   k: int = 5) -> Path:
    """A PNG grid: one held-out ``source`` query per class (its thumbnail and class), then its ``k`` nearest
    held-out ``target`` items, framed green when their class matches, red when not."""
    s_data, t_data = pack.data[source], pack.data[target]
    s_items, s_labels = s_data.split(True)
    t_items, t_labels = t_data.split(True)
    rows = []
    for c in range(len(s_data.classes)):
        hits = np.flatnonzero(s_labels == c)
        if not len(hits):
            continue
        q = int(hits[0])
        row = [_frame(_label(render_item(source, s_items[q]), f"{source}: {s_data.classes[c]}"), (90, 90, 90))]
        for j in top[q][:k]:
            ok = t_labels[j] == c
            row.append(_frame(_label(render_item(target, t_items[j]), t_data.classes[int(t_labels[j])]),
                              (40, 170, 60) if ok else (210, 40, 40)))
        rows.append(row)
    return _grid(rows, Path(path), f"emergent retrieval {source} -> {target} (held out; never paired in training)")


#: the bars of :func:`draw_summary`: (label, colour)
SUMMARY_BARS = (
    ("zero-shot, held out", (40, 90, 170)),
    ("zero-shot, shifted", (110, 160, 230)),
    ("baseline LR, held out", (200, 120, 40)),
    ("baseline LR, shifted", (240, 180, 110)),
    ("zero-shot, random init", (150, 150, 150)),
)


def summary_rows(report: dict[str, Any]) -> dict[str, list[float | None]]:
    """Per modality (and retrieval pair) the five figures of :data:`SUMMARY_BARS` (``None``: not measured)."""
    rows: dict[str, list[float | None]] = {}
    ablation = report.get("ablation", {}).get("modalities", {})
    for m, zs in report.get("zero_shot", {}).items():
        base = report.get("baselines", {}).get(m, {})
        rows[m] = [zs.get("top1"), report.get("shifted", {}).get(m, {}).get("top1"), base.get("top1"),
                   base.get("shifted", {}).get("top1"), ablation.get(m, {}).get("random_init", {}).get("top1")]
    for pair, r in report.get("retrieval", {}).items():
        rows[pair] = [r.get("top1"), None, None, None, None]
    return rows


def draw_summary(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """A PNG bar chart of an :func:`~hub_starter.evaluation.evaluate` report: per modality, top-1 zero-shot on
    the held-out split and on the shifted set, the raw-feature baseline on both, and the random-init ablation."""
    from PIL import Image, ImageDraw

    rows = summary_rows(report)
    bar, gap, height, top, left = 14, 26, 220, 56, 40
    width = left + len(rows) * (len(SUMMARY_BARS) * bar + gap) + 20
    img = Image.new("RGB", (max(width, 560), top + height + 30), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), f"starter pack, seed {report.get('seed')} ({report.get('budget')}): top-1", fill=(0, 0, 0))
    for i, (label, colour) in enumerate(SUMMARY_BARS):  # legend
        x = 6 + (i % 3) * 180
        y = 18 + (i // 3) * 14
        draw.rectangle([x, y + 2, x + 8, y + 9], fill=colour)
        draw.text((x + 12, y), label, fill=(0, 0, 0))
    base = top + height
    for tick in (0.0, 0.5, 0.7, 0.93, 1.0):
        y = base - tick * height
        draw.line([(left - 4, y), (img.width - 10, y)], fill=(225, 225, 225) if tick not in (0.7, 0.93) else (240, 170, 170))
        draw.text((4, y - 6) if tick != 0.93 else (img.width - 34, y - 12), f"{tick:.2f}", fill=(90, 90, 90))
    x = left
    for name, values in rows.items():
        for (label, colour), v in zip(SUMMARY_BARS, values):
            if v is not None:
                draw.rectangle([x, base - v * height, x + bar - 2, base], fill=colour)
            x += bar
        draw.text((x - len(SUMMARY_BARS) * bar, base + 6), name[:14], fill=(0, 0, 0))
        x += gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
