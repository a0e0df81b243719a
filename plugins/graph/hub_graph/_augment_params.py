"""Graph augmentation params and descriptions: light (pydantic only), shared by the registration in
:mod:`hub_graph._augment` and the implementation in :mod:`hub_graph._augment_impl`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hub.augment import AugmentParams as _Params

__all__ = [
    "DEFAULT_IN_CHANNELS", "DESCRIPTIONS", "EdgePerturbParams", "FeatureMaskParams", "NodeDropParams", "SubgraphParams",
]

#: feature width of the structural / chemical recipe (the encoders' default ``in_channels``)
DEFAULT_IN_CHANNELS = 16

#: name -> description
DESCRIPTIONS = {
    "node_drop": "drop a share of the nodes and their edges; renumber the rest",
    "edge_perturb": "drop a share of the edges and add as many new random ones",
    "feature_mask": "zero a share of the feature columns or entries",
    "subgraph": "a connected breadth-first subgraph around a random node",
}


# -- params ------------------------------------------------------------------------------------------
class NodeDropParams(_Params):
    share: float = Field(0.2, ge=0.0, lt=1.0, description="share of the nodes to drop")
    min_nodes: int = Field(1, ge=1, description="nodes that always stay (when the graph has that many)")


class EdgePerturbParams(_Params):
    share: float = Field(0.2, ge=0.0, le=1.0, description="share of the undirected edges to drop, and to add")


class FeatureMaskParams(_Params):
    share: float = Field(0.2, ge=0.0, le=1.0, description="share of the feature columns (or entries) to zero")
    mode: Literal["column", "entry"] = Field("column", description="zero whole columns, or single entries")


class SubgraphParams(_Params):
    share: float = Field(0.5, gt=0.0, le=1.0, description="share of the nodes the subgraph keeps")
    min_nodes: int = Field(4, ge=1, description="nodes kept at least (capped by the largest component)")
