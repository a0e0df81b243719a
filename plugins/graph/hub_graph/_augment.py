"""Graph augmentations: modality-preserving transforms for self-supervised learning (GraphCL-style).

This module is what plugin discovery imports, so it stays light: the params models, the
registration and thin wrappers (the params models live in
:mod:`hub_graph._augment_params`).  The work (torch_geometric, networkx, scipy) lives in
:mod:`hub_graph._augment_impl`, imported by a wrapper's first call.

Every augmentation is ``fn(item, rng, **params) -> Data``: it reads any accepted
graph item with the plugin's own reader (:func:`hub_graph._items.to_graph`:
features as given, or the 16-column structural / chemical recipe when the item
has none) and returns a **new** ``torch_geometric.data.Data`` in the canonical
form ``Data(x=(num_nodes, F) float32, edge_index=(2, E) long, num_nodes=N)`` with
undirected, coalesced edges (each edge both ways) — never modifying the input.
``F`` is the item's own feature width (16 when features are computed), so an
encoder with that ``in_channels`` reads the result.  Other fields (``edge_attr``,
labels) are not carried over.  Randomness comes only from ``rng`` (a
``numpy.random.Generator``; an int seed or ``None`` also works); the graph work is
done by ``torch_geometric.utils`` (``subgraph``, ``k_hop_subgraph``,
``to_undirected``) and scipy's ``connected_components``.

=============  ==============================================================================
name           what it does (params)
=============  ==============================================================================
node_drop      drop ``round(share * N)`` random nodes and their edges (at least ``min_nodes``
               nodes stay); the rest are renumbered in their original order
edge_perturb   drop ``round(share * E)`` random undirected edges and add as many new random
               ones (never self-loops or existing edges; fewer if the graph is nearly complete)
feature_mask   zero ``round(share * F)`` random feature columns (``mode="column"``) or each
               entry with probability ``share`` (``mode="entry"``); columns that are already
               all zero are not picked
subgraph       a connected subgraph grown breadth-first (hop by hop, ``k_hop_subgraph``) from
               a random node until it has ``max(min_nodes, ceil(share * N))`` nodes (the last
               hop is sampled); capped by the largest connected component, and the start node
               is drawn from components at least that large
=============  ==============================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from hub import AugmentationSpec, hookimpl
from hub.augment import AugmentParams as _Params

from ._augment_params import (
    DEFAULT_IN_CHANNELS,
    DESCRIPTIONS,
    EdgePerturbParams,
    FeatureMaskParams,
    NodeDropParams,
    SubgraphParams,
)

if TYPE_CHECKING:
    import numpy as np
    from torch_geometric.data import Data

__all__ = [
    "AUGMENTATIONS", "DEFAULT_IN_CHANNELS", "edge_perturb", "feature_mask", "node_drop", "read_graph",
    "register_augmentations", "subgraph",
]


# -- thin wrappers -----------------------------------------------------------------------------------
def _lazy(name: str) -> Callable[..., Data]:
    """``fn(item, rng, **params)`` that imports :mod:`hub_graph._augment_impl` on its first call."""

    def fn(item: Any, rng: np.random.Generator | int | None = None, **params: Any) -> Data:
        from . import _augment_impl

        return getattr(_augment_impl, name)(item, rng, **params)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Graph augmentation {name!r}: {DESCRIPTIONS[name]} (implemented in hub_graph._augment_impl)."
    return fn


node_drop = _lazy("node_drop")
edge_perturb = _lazy("edge_perturb")
feature_mask = _lazy("feature_mask")
subgraph = _lazy("subgraph")

#: name -> (fn, params model, description)
AUGMENTATIONS: dict[str, tuple[Callable[..., Data], type[_Params], str]] = {
    "node_drop": (node_drop, NodeDropParams, DESCRIPTIONS["node_drop"]),
    "edge_perturb": (edge_perturb, EdgePerturbParams, DESCRIPTIONS["edge_perturb"]),
    "feature_mask": (feature_mask, FeatureMaskParams, DESCRIPTIONS["feature_mask"]),
    "subgraph": (subgraph, SubgraphParams, DESCRIPTIONS["subgraph"]),
}


def read_graph(item: Any) -> Data:
    """Any accepted graph item → canonical ``Data(x, edge_index, num_nodes)`` (new tensors, undirected)."""
    from ._augment_impl import read_graph as impl

    return impl(item)


def __getattr__(name: str) -> Any:
    """The implementation's other names (``_induced``, ``_new_edges``, ...) stay reachable from here."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _augment_impl

    try:
        return getattr(_augment_impl, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


@hookimpl
def register_augmentations(register):
    for name, (fn, params, description) in AUGMENTATIONS.items():
        register(AugmentationSpec(
            name=name, modality="graph", fn=fn, params=params,
            description=f"{description} (returns torch_geometric Data with x, undirected edge_index)",
        ))
