"""Supervised baselines on raw features, trained on the starter pack's training split (scikit-learn).

* image: logistic regression on the greyscale pixels (scaled to 0..1);
* audio: MFCC statistics (torchaudio's ``MFCC``: mean and standard deviation over time of 20
  coefficients and their deltas) + logistic regression;
* graph: degree histogram (share of nodes of degree 0, 1, ..., 15 and >= 16) + logistic regression;
* 3d: the D2 shape distribution (Osada et al.: a histogram of the distances between random point
  pairs, divided by their mean, so it is scale-free) + logistic regression.

They see labels, which the shared space never does (it only meets captions): they are the bar
the zero-shot figures are compared with, on the held-out split and on the shifted sets.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .data import StarterData


def image_features(items: Sequence[Any]) -> np.ndarray:
    return np.stack([np.asarray(x.convert("L"), dtype=np.float32).ravel() / 255.0 for x in items])


def audio_features(items: Sequence[Any], n_mfcc: int = 20) -> np.ndarray:
    import torch
    import torchaudio

    rows, cache = [], {}
    with torch.no_grad():
        for x in items:
            rate = int(x["sampling_rate"])
            if rate not in cache:
                cache[rate] = torchaudio.transforms.MFCC(rate, n_mfcc=n_mfcc, melkwargs={"n_mels": 40, "n_fft": 512})
            m = cache[rate](torch.as_tensor(np.asarray(x["array"], dtype=np.float32)))  # (n_mfcc, frames)
            d = torchaudio.functional.compute_deltas(m.unsqueeze(0))[0]
            rows.append(torch.cat([m.mean(1), m.std(1), d.mean(1), d.std(1)]).numpy())
    return np.stack(rows)


def graph_features(items: Sequence[Any], max_degree: int = 16) -> np.ndarray:
    rows = []
    for g in items:
        degrees = np.minimum(np.fromiter((d for _, d in g.degree()), dtype=np.int64), max_degree)
        rows.append(np.bincount(degrees, minlength=max_degree + 1) / max(len(degrees), 1))
    return np.stack(rows).astype(np.float32)


def d2_features(items: Sequence[Any], bins: int = 32, pairs: int = 4096, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    rows = []
    for pts in items:
        xyz = np.asarray(pts, dtype=np.float64)[:, :3]
        a, b = rng.integers(0, len(xyz), (2, pairs))
        d = np.linalg.norm(xyz[a] - xyz[b], axis=1)
        d = d / max(float(d.mean()), 1e-12)
        rows.append(np.histogram(d, bins=bins, range=(0.0, 3.0))[0] / pairs)
    return np.stack(rows).astype(np.float32)


#: modality → (feature name, ``features(items) -> (items, features)``)
FEATURES: dict[str, tuple[str, Callable[[Sequence[Any]], np.ndarray]]] = {
    "image": ("pixels", image_features),
    "audio": ("MFCC statistics", audio_features),
    "graph": ("degree histogram", graph_features),
    "3d": ("D2 histogram", d2_features),
}


def baseline(data: StarterData, shifted: StarterData | None = None, seed: int = 0) -> dict[str, Any]:
    """Fit a logistic regression on ``data``'s training split; top-1 on its held-out split and on ``shifted``
    (overall and per shift kind)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    name, features = FEATURES[data.modality]
    train_items, train_labels = data.split(False)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0, random_state=seed))
    model.fit(features(train_items), train_labels)
    items, labels = data.split(True)
    out: dict[str, Any] = {"features": name, "model": "logistic regression", "train": int(len(train_labels)),
                           "top1": float((model.predict(features(items)) == labels).mean())}
    if shifted is not None:
        pred = model.predict(features(shifted.items))
        out["shifted"] = per_kind(pred == shifted.labels, shifted)
    return out


def per_kind(hits: np.ndarray, data: StarterData) -> dict[str, Any]:
    """``{"top1": overall, "n": count, "kinds": {kind: top1}}`` of a shifted set's per-item hits."""
    kinds = [i.get("shift", "?") for i in data.info]
    return {"top1": float(hits.mean()), "n": int(len(hits)),
            "kinds": {k: float(hits[[j for j, x in enumerate(kinds) if x == k]].mean()) for k in dict.fromkeys(kinds)}}
