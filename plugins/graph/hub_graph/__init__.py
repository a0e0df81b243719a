"""Graph modality for modality-hub: GNN encoders on PyTorch Geometric, one token per node.

Encoders (untrained presets; load trained weights with ``weights=DIR``):
``gin`` (default), ``gat`` (GATv2), ``sage`` (GraphSAGE) and ``gps`` (GPS graph
transformer).  Items: ``torch_geometric.data.Data``, networkx graphs, dicts with
``edge_index``, edge list / GraphML / GML files, and SMILES strings with the
``chem`` extra.  See ``hub_graph._items`` for the node feature recipe and
``hub_graph._encoder`` for the token layout.  Registration imports neither
torch_geometric nor networkx; building an encoder does.
"""

from __future__ import annotations

import sys
from typing import Any

from hub import EncoderSpec, Modality, hookimpl

from ._meta import ACCEPTS, FILE_SUFFIXES, PRESETS, GraphOptions

__all__ = [
    "ACCEPTS", "FILE_SUFFIXES", "PRESETS", "GraphConfig", "GraphEncoder", "GraphOptions", "examples", "is_graph", "sample_graph",
]


def is_graph(item: Any) -> bool:
    """Claims PyG ``Data``, networkx graphs and dicts holding ``edge_index`` (cheap, never raises)."""
    if isinstance(item, dict):
        return "edge_index" in item and "array" not in item
    pyg = sys.modules.get("torch_geometric.data")  # an item of these types means its library is imported
    if pyg is not None and isinstance(item, pyg.Data):
        return True
    networkx = sys.modules.get("networkx")
    return networkx is not None and isinstance(item, networkx.Graph)


def sample_graph() -> Any:
    """Zachary's karate club (34 nodes, 78 edges), built by networkx offline."""
    import networkx

    return networkx.karate_club_graph()


def examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` connected random graphs of varied size, as ``{"edge_index", "num_nodes"}`` dicts (seeded).

    Node counts vary from 3 to 60; every fourth graph has 130-170 nodes, above the
    default ``max_tokens=128``, so the top-k node selection is exercised.  Each graph
    is a random tree plus ``0.2-1.5 x nodes`` extra random edges (numpy only).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        nodes = int(rng.integers(130, 171) if i % 4 == 3 else rng.integers(3, 61))
        parents = [int(rng.integers(0, v)) for v in range(1, nodes)]  # a random spanning tree
        extra = int(rng.uniform(0.2, 1.5) * nodes)
        src = np.concatenate([np.arange(1, nodes), rng.integers(0, nodes, extra)])
        dst = np.concatenate([np.array(parents, dtype=np.int64), rng.integers(0, nodes, extra)])
        keep = src != dst  # no self loops
        items.append({"edge_index": np.stack([src[keep], dst[keep]]).astype(np.int64), "num_nodes": nodes})
    return items


def _factory(name: str, processor: bool = False):
    def factory(**options: Any):
        from ._encoder import make_factory, make_processor_factory

        return (make_processor_factory if processor else make_factory)(name)(**options)

    return factory


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="graph",
            accepts=ACCEPTS,
            detect=is_graph,
            extensions=FILE_SUFFIXES,
            default_encoder="gin",
            demo_encoder="gin",
            sample=sample_graph,
            examples=examples,
            description="Graphs and molecules: one token per node (GIN, GAT, GraphSAGE, GPS)",
        )
    )


@hookimpl
def register_encoders(register):
    for name, preset in PRESETS.items():
        register(EncoderSpec(
            name=name, modality="graph", factory=_factory(name), processor=_factory(name, processor=True),
            options=GraphOptions,
            weights=None, license="apache-2.0", pretrained=False,
            description=f"{preset.description}; one token per node (max_tokens=128, top-k above); "
                        "weights=DIR loads save_pretrained output",
        ))


def __getattr__(name: str) -> Any:
    if name in ("GraphEncoder", "GraphConfig"):
        from . import _encoder

        return getattr(_encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
from ._augment import register_augmentations  # noqa: E402,F401  (pluggy finds the hook on this module)
