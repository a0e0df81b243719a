"""Graph augmentations, the implementation: it imports torch_geometric, so :mod:`hub_graph._augment`
(whose docstring describes every augmentation and the canonical ``Data`` form) registers thin wrappers
that import this module on their first call."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import k_hop_subgraph, to_undirected
from torch_geometric.utils import subgraph as pyg_subgraph

from hub import InvalidInputError
from hub.augment import AugmentParams as _Params
from hub.augment import parse_params

from ._augment_params import (
    DEFAULT_IN_CHANNELS,
    DESCRIPTIONS,
    EdgePerturbParams,
    FeatureMaskParams,
    NodeDropParams,
    SubgraphParams,
)
from ._items import ItemProblem, _fields, to_graph

__all__ = ["AUGMENTATIONS", "DEFAULT_IN_CHANNELS", "read_graph"]

#: up to this many nodes, new edges are drawn from the enumerated non-edges; above, by rejection
_ENUMERATE_NODES = 1024


# -- machinery ---------------------------------------------------------------------------------------
def _width(item: Any) -> int:
    """The feature width an item brings (``DEFAULT_IN_CHANNELS`` when it brings none)."""
    x = _fields(item).get("x")
    shape = tuple(getattr(x, "shape", ())) if x is not None else ()
    if x is not None and not shape:
        shape = np.shape(x)
    return int(shape[1]) if len(shape) == 2 and shape[1] >= 1 else DEFAULT_IN_CHANNELS


def read_graph(item: Any) -> Data:
    """Any accepted graph item → canonical ``Data(x, edge_index, num_nodes)`` (new tensors, undirected)."""
    try:
        data = to_graph(item, in_channels=_width(item), undirected=True)
    except ItemProblem as exc:
        raise InvalidInputError(f"cannot augment this graph item: {exc.problem}") from None
    return Data(x=data.x.detach().clone().float(), edge_index=data.edge_index.clone(), num_nodes=int(data.num_nodes))


def _augmentation(params: type[_Params]) -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    """Wrap ``impl(data, rng, p)`` as ``fn(item, rng, **params)``: validate, read, run."""

    def wrap(impl: Callable[..., Data]) -> Callable[..., Data]:
        @functools.wraps(impl)
        def fn(item: Any, rng: np.random.Generator | int | None = None, **kwargs: Any) -> Data:
            p = parse_params(params, kwargs, f"graph augmentation {impl.__name__!r}")
            return impl(read_graph(item), np.random.default_rng(rng), p)

        return fn

    return wrap


def _induced(data: Data, keep: np.ndarray) -> Data:
    """The subgraph on the sorted node ids ``keep``, renumbered 0..len(keep)-1."""
    subset = torch.from_numpy(np.sort(keep).astype(np.int64))
    edge_index, _ = pyg_subgraph(subset, data.edge_index, relabel_nodes=True, num_nodes=data.num_nodes)
    return Data(x=data.x[subset].clone(), edge_index=edge_index, num_nodes=int(subset.numel()))


def _pairs(edge_index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges as unique ``(u < v)`` rows, and the self-loops ``(v, v)`` apart."""
    ei = edge_index.numpy()
    loops = ei[:, ei[0] == ei[1]]
    lo, hi = np.minimum(ei[0], ei[1]), np.maximum(ei[0], ei[1])
    pairs = np.unique(np.stack([lo, hi], axis=1)[lo != hi], axis=0).reshape(-1, 2)  # (E_undirected, 2)
    return pairs, loops


def _new_edges(n: int, existing: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` (or as many as exist) random ``(u < v)`` pairs that are not in ``existing`` (ids ``u * n + v``)."""
    taken = set(existing.tolist())
    available = n * (n - 1) // 2 - len(taken)
    count = min(count, available)
    if count <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    if n <= _ENUMERATE_NODES:
        u, v = np.triu_indices(n, k=1)
        free = ~np.isin(u * n + v, existing)
        pick = rng.choice(int(free.sum()), count, replace=False)
        return np.stack([u[free][pick], v[free][pick]], axis=1)
    chosen: list[int] = []
    seen = set(taken)
    while len(chosen) < count:  # sparse large graph: collisions are rare
        a, b = rng.integers(0, n, 2 * (count - len(chosen))).reshape(2, -1)
        for x, y in zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()):
            key = x * n + y
            if x != y and key not in seen and len(chosen) < count:
                seen.add(key)
                chosen.append(key)
    ids = np.array(chosen, dtype=np.int64)
    return np.stack([ids // n, ids % n], axis=1)


# -- augmentations -----------------------------------------------------------------------------------
@_augmentation(NodeDropParams)
def node_drop(data: Data, rng: np.random.Generator, p: NodeDropParams) -> Data:
    n = int(data.num_nodes)
    drop = max(0, min(int(round(p.share * n)), n - p.min_nodes))
    keep = rng.choice(n, n - drop, replace=False)
    return _induced(data, keep)


@_augmentation(EdgePerturbParams)
def edge_perturb(data: Data, rng: np.random.Generator, p: EdgePerturbParams) -> Data:
    n = int(data.num_nodes)
    pairs, loops = _pairs(data.edge_index)
    count = int(round(p.share * len(pairs)))
    kept = pairs[np.sort(rng.choice(len(pairs), len(pairs) - count, replace=False))] if count else pairs
    added = _new_edges(n, pairs[:, 0] * n + pairs[:, 1], count, rng)
    both = np.concatenate([kept, added], axis=0).T  # (2, E_undirected)
    edge_index = torch.from_numpy(np.concatenate([both, loops], axis=1).astype(np.int64))
    return Data(x=data.x.clone(), edge_index=to_undirected(edge_index, num_nodes=n), num_nodes=n)


@_augmentation(FeatureMaskParams)
def feature_mask(data: Data, rng: np.random.Generator, p: FeatureMaskParams) -> Data:
    x = data.x.clone()  # (N, F)
    if p.mode == "column":
        live = np.flatnonzero((x != 0).any(dim=0).numpy())  # zeroing an all-zero column changes nothing
        count = min(int(round(p.share * x.shape[1])), len(live))
        x[:, torch.from_numpy(rng.choice(live, count, replace=False).astype(np.int64))] = 0.0
    else:
        x[torch.from_numpy(rng.random(tuple(x.shape)) < p.share)] = 0.0
    return Data(x=x, edge_index=data.edge_index.clone(), num_nodes=int(data.num_nodes))


@_augmentation(SubgraphParams)
def subgraph(data: Data, rng: np.random.Generator, p: SubgraphParams) -> Data:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(data.num_nodes)
    ei = data.edge_index.numpy()
    _, labels = connected_components(coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(n, n)), directed=False)
    sizes = np.bincount(labels)
    size = min(max(p.min_nodes, math.ceil(p.share * n)), int(sizes.max()))
    start = int(rng.choice(np.flatnonzero(sizes[labels] >= size)))
    nodes = np.array([start])
    while len(nodes) < size:  # one hop at a time; every new node touches the current set
        ball = k_hop_subgraph(torch.from_numpy(nodes), 1, data.edge_index, num_nodes=n)[0].numpy()
        frontier = np.setdiff1d(ball, nodes)
        need = size - len(nodes)
        if len(frontier) > need:
            frontier = rng.choice(frontier, need, replace=False)
        nodes = np.concatenate([nodes, frontier])
    return _induced(data, nodes)


#: name -> (fn, params model, description): the implementations (``hub_graph._augment.AUGMENTATIONS``
#: holds the registered thin wrappers)
AUGMENTATIONS: dict[str, tuple[Callable[..., Data], type[_Params], str]] = {
    name: (fn, params, DESCRIPTIONS[name])
    for name, fn, params in (
        ("node_drop", node_drop, NodeDropParams),
        ("edge_perturb", edge_perturb, EdgePerturbParams),
        ("feature_mask", feature_mask, FeatureMaskParams),
        ("subgraph", subgraph, SubgraphParams),
    )
}
