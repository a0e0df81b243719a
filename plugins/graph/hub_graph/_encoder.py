"""GIN, GAT, GraphSAGE and GPS encoders on PyTorch Geometric: one token per node.

Tokens
------
Each graph yields one token per node, in node order, at most ``max_tokens``
(128 by default).  TopKPooling (Graph U-Nets / Cangea et al.) reduces larger
graphs: PyG's ``SelectTopK`` scores every node with a learned projection
``s = h·p / |p|`` and keeps the ``min(num_nodes, max_tokens)`` best-scored
nodes of each graph (ranked on ``s`` rather than the saturating ``tanh(s)``),
gated by ``tanh(s)`` as ``TopKPooling`` does.  Graphs with at most
``max_tokens`` nodes keep every node, in node order; above the cap the kept
nodes come best score first (so nodes whose embeddings tie, e.g. symmetric
nodes, cannot swap places between a batch and a single call).  With
``graph_token=True`` a pooled graph token (the mean of all node embeddings,
before the reduction) is prepended and ``pooled()`` returns it
(``pooling="cls"``).  Tokens per item: ``min(num_nodes, max_tokens) + graph_token``.

Weights
-------
The presets are untrained (random init from ``seed``).  ``save_pretrained(dir)``
writes ``config.json`` and ``model.safetensors``; ``weights=dir`` (or
:meth:`GraphEncoder.from_pretrained`) loads them back, safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MLP, GINConv, GPSConv, global_mean_pool
from torch_geometric.nn.pool.select import SelectTopK
from torch_geometric.nn.models import GAT, GIN, GraphSAGE
from torch_geometric.utils import cumsum, degree, to_dense_batch

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidOptionsError, WeightsNotFoundError

from ._items import ItemProblem, to_graph
from ._meta import ACCEPTS, PRESETS, GraphOptions

__all__ = ["GPS", "GraphConfig", "GraphEncoder", "make_factory"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = "modality-hub-graph"
Arch = Literal["gin", "gat", "sage", "gps"]


class GPS(torch.nn.Module):
    """A GPS graph transformer (Rampášek et al. 2022): per layer, a local GIN
    message pass plus global multi-head attention over the graph's nodes
    (``torch_geometric.nn.GPSConv``), after a linear input projection."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, heads: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(in_channels, hidden_channels)
        self.layers = torch.nn.ModuleList(
            GPSConv(hidden_channels, GINConv(MLP([hidden_channels] * 3)), heads=heads, attn_type="multihead")
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        h = self.lin(x)  # (nodes, hidden)
        for layer in self.layers:
            h = layer(h, edge_index, batch)
        return h


class GraphConfig(BaseModel):
    """``config.json`` of a saved graph encoder."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["modality-hub-graph"] = FORMAT
    format_version: Literal[1] = 1
    arch: Arch
    in_channels: int = Field(ge=1)
    hidden_channels: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    heads: int = Field(1, ge=1)
    max_tokens: int = Field(128, ge=1)
    graph_token: bool = False
    undirected: bool = True


#: architecture name -> builder of the node-embedding network (x, edge_index, batch=...) -> (nodes, hidden)
BUILDERS: dict[str, Callable[[GraphConfig], torch.nn.Module]] = {
    "gin": lambda c: GIN(c.in_channels, c.hidden_channels, c.num_layers),
    "gat": lambda c: GAT(c.in_channels, c.hidden_channels, c.num_layers, v2=True, heads=c.heads),
    "sage": lambda c: GraphSAGE(c.in_channels, c.hidden_channels, c.num_layers),
    "gps": lambda c: GPS(c.in_channels, c.hidden_channels, c.num_layers, c.heads),
}
ARCH_KEYS = ("in_channels", "hidden_channels", "num_layers", "heads")


class GraphEncoder(Encoder):
    """A graph → one token per node (at most ``max_tokens``), plus an optional graph token."""

    modality = "graph"
    accepts = ACCEPTS

    def __init__(self, config: GraphConfig, seed: int = 0) -> None:
        super().__init__()
        if config.arch in ("gat", "gps") and config.hidden_channels % config.heads:
            raise InvalidOptionsError(
                f"hidden_channels ({config.hidden_channels}) must be divisible by heads ({config.heads})"
            )
        self.config = config
        self.name = config.arch
        self.max_tokens, self.graph_token = config.max_tokens, config.graph_token
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.gnn = BUILDERS[config.arch](config)
            # TopKPooling's node selection; identity act: rank on s, gate with tanh(s) in forward
            self.select = SelectTopK(config.hidden_channels, ratio=config.max_tokens, act=torch.nn.Identity())
        self.dim = config.hidden_channels
        self.pooling = "cls" if config.graph_token else "mean"
        self.weights = f"random-init(seed={seed})"
        self.pretrained = False

    # -- weights -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> "GraphEncoder":
        """Load a directory written by :meth:`save_pretrained`; ``overrides`` set
        ``max_tokens``, ``graph_token`` or ``undirected`` (architecture fields must match)."""
        path = Path(directory).expanduser()
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise WeightsNotFoundError(
                f"graph encoder weights {os.fspath(directory)!r}: expected a directory holding {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (written by GraphEncoder.save_pretrained); pickled weights are refused"
            )
        try:
            saved = GraphConfig(**json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")))
        except (ValueError, TypeError, ValidationError) as exc:
            raise WeightsNotFoundError(f"{path / CONFIG_NAME} is not a {FORMAT} config: {exc}") from None
        for key in ARCH_KEYS:
            if overrides.get(key) is not None and overrides[key] != getattr(saved, key):
                raise InvalidOptionsError(
                    f"{key}={overrides[key]} does not match the saved encoder in {str(path)!r} ({key}={getattr(saved, key)}); "
                    f"leave {key} unset when loading weights"
                )
        runtime = {k: v for k, v in overrides.items() if v is not None and k not in ARCH_KEYS}
        encoder = cls(saved.model_copy(update=runtime))
        try:
            state = load_file(path / WEIGHTS_NAME)
            encoder.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - corrupt file or mismatched tensors
            raise WeightsNotFoundError(
                f"{path / WEIGHTS_NAME} could not be loaded into a {saved.arch} encoder: {type(exc).__name__}: {exc}"
            ) from None
        encoder.weights = os.fspath(directory)
        return encoder.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``; returns it."""
        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config.model_dump(), indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, path / WEIGHTS_NAME, metadata={"format": "pt", "arch": self.config.arch})
        return path

    # -- preprocess ----------------------------------------------------------------------------------
    def prepare(self, item: Any, index: int = 0) -> Data:
        try:
            return to_graph(item, in_channels=self.config.in_channels, undirected=self.config.undirected)
        except ItemProblem as p:
            raise self.invalid(index, item, p.problem, p.accepted) from None

    def collate(self, prepared: Sequence[Data]) -> dict[str, torch.Tensor]:
        batch = Batch.from_data_list(list(prepared))
        return {"x": batch.x, "edge_index": batch.edge_index, "batch": batch.batch}

    def num_tokens(self, prepared: Data) -> int:
        return min(int(prepared.num_nodes), self.max_tokens) + int(self.graph_token)

    def length(self, prepared: Data) -> int:
        return int(prepared.num_nodes)

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,  # (nodes, in_channels), all graphs of the batch
        edge_index: torch.Tensor,  # (2, edges)
        batch: torch.Tensor,  # (nodes,) graph of each node
    ) -> TokenEmbeddings:
        h = self.gnn(x, edge_index, batch=batch)  # (nodes, dim)
        # TopKPooling ranked on the score before tanh: a saturated tanh (1.0 for many nodes)
        # would leave the choice to the sort's tie-breaking, which batching changes
        picked = self.select(h, batch)  # node_index grouped by graph, best first; weight: s
        perm = picked.node_index  # (kept,)
        kept = h[perm] * torch.tanh(picked.weight).unsqueeze(-1)  # gated as TopKPooling does
        kept_batch = batch[perm]
        # perm is grouped by graph, best score first; graphs under the cap go back to node order
        nodes = degree(batch, dtype=torch.long)  # (graphs,) nodes per graph
        first_node, first_kept = cumsum(nodes)[:-1], cumsum(nodes.clamp(max=self.max_tokens))[:-1]
        rank = torch.arange(perm.numel(), device=perm.device) - first_kept[kept_batch]
        local = torch.where(nodes[kept_batch] > self.max_tokens, rank, perm - first_node[kept_batch])
        order = (kept_batch * batch.numel() + local).argsort()
        tokens, mask = to_dense_batch(kept[order], kept_batch[order])  # (batch, tokens, dim), (batch, tokens)
        if self.graph_token:
            pooled = global_mean_pool(h, batch)  # (batch, dim)
            tokens = torch.cat([pooled.unsqueeze(1), tokens], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.tokens(tokens, mask)


def make_factory(name: str) -> Callable[..., GraphEncoder]:
    """The registry factory of preset ``name``: random init, or ``weights=`` a saved directory."""
    preset = PRESETS[name]

    def factory(weights: str | None = None, seed: int = 0, **options: Any) -> GraphEncoder:
        given = {k: v for k, v in options.items() if v is not None}
        if weights is not None:
            encoder = GraphEncoder.from_pretrained(weights, **given)
            if encoder.config.arch != preset.arch:
                raise InvalidOptionsError(
                    f"weights {weights!r} hold a {encoder.config.arch!r} encoder, not {preset.arch!r}; "
                    f"load them with encoder {encoder.config.arch!r}"
                )
            return encoder
        defaults = {"in_channels": 16, "hidden_channels": preset.hidden_channels,
                    "num_layers": preset.num_layers, "heads": preset.heads}
        return GraphEncoder(GraphConfig(arch=preset.arch, **{**defaults, **given}), seed=seed)

    return factory
