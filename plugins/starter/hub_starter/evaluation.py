"""Evaluating the starter pack: zero-shot classification, emergent retrieval, the ablation and text queries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hub import Hub
from hub.errors import InvalidInputError

from .determinism import environment, versions
from .draw import _frame, _grid, _label, draw_retrieval, draw_summary, render_item
from .baselines import per_kind
from .data import StarterData
from .pack import StarterBudget, StarterPack, _budget, _log, build_starter_pack

# -- evaluation ---------------------------------------------------------------------------------


def _topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(min(k, scores.shape[1]), dim=1).indices  # (queries, k)


def zero_shot(pack: StarterPack, modality: str, k: int = 5, data: StarterData | None = None) -> dict[str, Any]:
    """Zero-shot classification of ``modality``'s held-out items (or of ``data``'s: a shifted set, see
    :mod:`hub_starter.shift`): the class captions are the text prompts, the nearest prompt wins.  Returns
    top-1 / top-``k`` accuracy, counts and the confusion matrix; for a shifted set also top-1 per kind."""
    data = data if data is not None else pack.data[modality]
    items, labels = data.split(True)
    x = pack.embed(modality, items)  # (items, dim)
    prompts = pack.embed_text(data.prompts())  # (classes, dim)
    top = _topk(x @ prompts.T, k).numpy()
    pred = top[:, 0]
    confusion = np.zeros((len(data.classes), len(data.classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    extra = {"kinds": per_kind(pred == labels, data)["kinds"]} if any("shift" in i for i in data.info) else {}
    return {**extra,
        "top1": float((pred == labels).mean()), f"top{k}": float((top == labels[:, None]).any(1).mean()),
        "n": int(len(labels)), "classes": list(data.classes), "prompts": data.prompts(),
        "confusion": confusion.tolist(),
    }


def retrieval(pack: StarterPack, source: str, target: str, k: int = 5) -> dict[str, Any]:
    """Emergent cross-modal retrieval: each held-out ``source`` item retrieves its nearest held-out ``target``
    items (the two modalities only ever met text); a hit is a retrieved item of the same class name."""
    s_data, t_data = pack.data[source], pack.data[target]
    if s_data.classes != t_data.classes:
        raise InvalidInputError(f"{source} and {target} do not share class names ({s_data.classes} vs {t_data.classes})")
    s_items, s_labels = s_data.split(True)
    t_items, t_labels = t_data.split(True)
    scores = pack.embed(source, s_items) @ pack.embed(target, t_items).T  # (queries, targets)
    top = _topk(scores, k).numpy()
    hits = t_labels[top] == s_labels[:, None]  # (queries, k)
    return {"top1": float(hits[:, 0].mean()), f"top{k}": float(hits.any(1).mean()), "queries": int(len(s_labels)),
            "targets": int(len(t_labels)), "_top": top, "_scores": scores}


def _shared_pairs(pack: StarterPack) -> list[tuple[str, str]]:
    mods = pack.modalities
    return [(a, b) for a in mods for b in mods if a != b and pack.data[a].classes == pack.data[b].classes]


def evaluate(pack: StarterPack, out_dir: str | os.PathLike | None = None, *, k: int = 5, grid_k: int = 5,
             progress: bool = False, shifted: bool = True, baselines: bool = True) -> dict[str, Any]:
    """Zero-shot top-1 / top-``k`` per modality and emergent retrieval between every two modalities that share
    class names (audio ↔ image), on held-out items; with ``shifted``, zero-shot on each modality's shifted set
    too (:mod:`hub_starter.shift`: generated, never trained on, reported apart, per kind of shift); with
    ``baselines``, a supervised logistic regression on raw features trained on the same split
    (:mod:`hub_starter.baselines`), on the held-out split and the shifted set.  Writes ``eval.json``,
    ``summary.png`` (every figure as bars), ``retrieval.png`` (audio → image grid, when both are in the
    pack) to ``out_dir`` (default ``<pack>/eval``).  ``report["environment"]`` records the build's and this
    process's versions, threads, instruction set, pinning variables and espeak-ng version."""
    from .baselines import baseline
    from .shift import shifted_data

    root = Path(out_dir) if out_dir is not None else pack.directory / "eval"
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    seed = pack.manifest.seed
    report: dict[str, Any] = {"seed": seed, "budget": pack.manifest.budget.name, "pretrain": pack.manifest.pretrain,
                              "build_seconds": pack.manifest.seconds, "zero_shot": {}, "retrieval": {}}
    if shifted:
        report["shifted"] = {}
    if baselines:
        report["baselines"] = {}
    for m in pack.modalities:
        zs = zero_shot(pack, m, k)
        report["zero_shot"][m] = zs
        _log(f"zero-shot {m}: top-1 {zs['top1']:.3f}, top-{k} {zs[f'top{k}']:.3f} ({zs['n']} held out)", progress)
        plan = pack.manifest.budget.plans[m]
        moved = shifted_data(m, seed, plan.data, **plan.shift) if shifted else None
        if moved is not None:
            sh = report["shifted"][m] = zero_shot(pack, m, k, data=moved)
            _log(f"shifted {m}: top-1 {sh['top1']:.3f} ({sh['n']} items; "
                 + ", ".join(f"{a} {b:.2f}" for a, b in sh["kinds"].items()) + ")", progress)
        if baselines:
            b = report["baselines"][m] = baseline(pack.data[m], moved, seed)
            _log(f"baseline {m} ({b['features']} + LR): top-1 {b['top1']:.3f}"
                 + (f", shifted {b['shifted']['top1']:.3f}" if moved is not None else ""), progress)
    grids = {}
    for a, b in _shared_pairs(pack):
        r = retrieval(pack, a, b, k)
        grids[(a, b)] = r.pop("_top"), r.pop("_scores")
        report["retrieval"][f"{a}->{b}"] = r
        _log(f"retrieval {a} → {b}: top-1 {r['top1']:.3f}, top-{k} {r[f'top{k}']:.3f}", progress)
    report["seconds"] = round(time.perf_counter() - t, 2)
    # what decided the numbers: the build's pinned environment and this process's (inference is not pinned)
    report["environment"] = {
        "build": {**pack.manifest.environment, "versions": pack.manifest.versions},
        "eval": {**environment(), "versions": versions()},
    }
    paths = {"json": str(root / "eval.json")}
    if ("audio", "image") in grids:
        top, _ = grids[("audio", "image")]
        paths["png"] = str(draw_retrieval(pack, "audio", "image", top, root / "retrieval.png", k=grid_k))
    report["paths"] = paths
    return write_report(report, root)


def write_report(report: dict[str, Any], root: str | os.PathLike) -> dict[str, Any]:
    """Write ``eval.json`` and ``summary.png`` (:func:`hub_starter.draw.draw_summary`) of ``report`` to ``root``."""
    root = Path(root)
    report.setdefault("paths", {})["summary"] = str(draw_summary(report, root / "summary.png"))
    report["paths"]["json"] = str(root / "eval.json")
    (root / "eval.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


def ablation(seed: int = 0, out_dir: str | os.PathLike | None = None, *, budget: str | StarterBudget = "full",
             modalities: Sequence[str] | None = None, progress: bool = True, hub: Hub | None = None,
             pack: StarterPack | None = None, isolated: bool = False) -> dict[str, Any]:
    """The same pipeline with and without self-supervised pretraining for ``modalities``, side by side:
    ``{modality: {"pretrained": {...}, "random_init": {...}}}`` of held-out zero-shot top-1 / top-5 and shifted
    top-1 (default ``modalities``: those the plan pretrains).
    ``pack``: the (pretrained) pack to compare with (default: build or load it).  The no-pretraining
    packs go to ``out_dir`` (default ``<cache>/starter-pack-no-pretrain``) and are cached the same way;
    ``isolated``: build them in a pinned child process (:func:`build_starter_pack`)."""
    plan = _budget(budget)
    if modalities is None:  # every modality the plan pretrains
        modalities = [m for m, p in plan.plans.items() if p.pretrain_epochs and (pack is None or m in pack.modalities)]
    with_pt = pack or build_starter_pack(seed=seed, budget=plan, progress=progress, hub=hub, isolated=isolated)
    without = build_starter_pack(out_dir, seed=seed, budget=plan, pretrain=False, modalities=list(modalities),
                                 progress=progress, hub=hub, isolated=isolated)
    report: dict[str, Any] = {"seed": seed, "budget": plan.name, "modalities": {}}
    from .shift import shifted_data

    for m in modalities:
        a, b = zero_shot(with_pt, m), zero_shot(without, m)
        moved = shifted_data(m, seed, plan.plans[m].data, **plan.plans[m].shift)
        sa, sb = zero_shot(with_pt, m, data=moved), zero_shot(without, m, data=moved)
        report["modalities"][m] = {
            "pretrained": {"top1": a["top1"], "top5": a["top5"], "shifted_top1": sa["top1"],
                           "pretrain_epochs": plan.plans[m].pretrain_epochs},
            "random_init": {"top1": b["top1"], "top5": b["top5"], "shifted_top1": sb["top1"], "pretrain_epochs": 0},
            "align": {"epochs": plan.plans[m].align_epochs, "train_encoder": plan.plans[m].train_encoder},
        }
        _log(f"ablation {m}: pretrained top-1 {a['top1']:.3f} vs random init {b['top1']:.3f} (shifted "
             f"{sa['top1']:.3f} vs {sb['top1']:.3f})", progress)
    root = Path(out_dir) if out_dir is not None else without.directory
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "ablation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["path"] = str(root / "eval" / "ablation.json")
    return report


# -- query and drawing --------------------------------------------------------------------------


def query(pack: StarterPack, text: str, k: int = 1) -> dict[str, list[tuple[int, str, float]]]:
    """A text query against every modality's held-out items: ``{modality: [(held-out index, class, cosine), ...]}``,
    the ``k`` nearest first."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("query needs a non-empty text, e.g. 'seven' or 'a torus'")
    q = pack.embed_text([text])  # (1, dim)
    out: dict[str, list[tuple[int, str, float]]] = {}
    for m in pack.modalities:
        items, labels = pack.data[m].split(True)
        scores = (pack.embed(m, items) @ q.T)[:, 0]  # (items,)
        best = scores.topk(min(k, len(items))).indices.tolist()
        out[m] = [(int(i), pack.data[m].classes[int(labels[i])], round(float(scores[i]), 4)) for i in best]
    return out


def draw_query(pack: StarterPack, text: str, path: str | os.PathLike, k: int = 1,
               answer: dict[str, list[tuple[int, str, float]]] | None = None) -> Path:
    """Draw :func:`query`'s answer as a PNG: per modality a row with the ``k`` nearest held-out items."""
    answer = answer or query(pack, text, k)
    rows = []
    for m, hits in answer.items():
        items, _ = pack.data[m].split(True)
        rows.append([_frame(_label(render_item(m, items[i]), f"{m}: {label} {score:.2f}"), (90, 90, 90))
                     for i, label, score in hits])
    return _grid(rows, Path(path), f"query: {text!r}")
