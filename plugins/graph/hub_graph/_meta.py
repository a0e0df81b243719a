"""Light metadata read at registration (no torch_geometric import): accepts, files, presets."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ACCEPTS", "FILE_SUFFIXES", "PRESETS", "GraphOptions", "Preset"]

FILE_SUFFIXES = (".edgelist", ".edges", ".graphml", ".gml")

ACCEPTS = (
    "torch_geometric.data.Data (optional x: (num_nodes, in_channels) features)",
    "networkx graph (node attribute 'x' as features, else structural features)",
    "dict with 'edge_index' (2, num_edges) and optional 'x', 'edge_attr', 'num_nodes'",
    f"path to a graph file ({', '.join(FILE_SUFFIXES)})",
    "dict {'data': GraphML / GML / edge-list text, 'format': 'graphml' | 'gml' | 'edgelist'}",
    "SMILES str with modality='graph' (needs modality-hub-graph[chem])",
)


@dataclass(frozen=True)
class Preset:
    """Architecture and default sizes of a registered encoder."""

    arch: str
    hidden_channels: int
    num_layers: int
    heads: int
    description: str


PRESETS: dict[str, Preset] = {
    "gin": Preset("gin", 32, 3, 1, "GIN (sum aggregation + MLP), 3 layers, 32-d; untrained"),
    "gat": Preset("gat", 32, 2, 4, "GATv2 attention, 2 layers, 4 heads, 32-d; untrained"),
    "sage": Preset("sage", 32, 2, 1, "GraphSAGE (mean aggregation), 2 layers, 32-d; untrained"),
    "gps": Preset("gps", 32, 2, 4, "GPS graph transformer (GIN local + global attention), 2 layers, 4 heads, 32-d; untrained"),
}


class GraphOptions(BaseModel):
    """Options of the graph encoders (``None``: the preset's or the saved config's value)."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(None, description="directory written by save_pretrained (config.json + model.safetensors)")
    seed: int = Field(0, description="random-init seed (ignored when weights= is given)")
    in_channels: int | None = Field(None, ge=1, description="node feature dim the encoder reads (default 16)")
    hidden_channels: int | None = Field(None, ge=2, description="width: token dim")
    num_layers: int | None = Field(None, ge=1, description="depth: message-passing layers")
    heads: int | None = Field(None, ge=1, description="attention heads (gat, gps)")
    max_tokens: int | None = Field(None, ge=1, description="node tokens per graph at most (default 128); top-k above")
    graph_token: bool | None = Field(None, description="prepend a pooled graph token (default False)")
    undirected: bool | None = Field(None, description="add reverse edges (default True)")
