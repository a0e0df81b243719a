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

Export
------
``collate`` returns PyG's ``x``, ``edge_index`` and ``batch`` plus ``node_mask``
(graphs, max nodes) and ``token_mask`` (graphs, tokens), computed in Python.
``forward`` takes every size it needs from those shapes and selects with a
per-graph ``topk`` over a padded score matrix (PyG's ``SelectTopK`` /
``to_dense_batch`` read sizes with ``int(...)`` and sort stably, which ONNX
cannot express), so it exports to ONNX with dynamic graphs, nodes and edges
(``torch.onnx.export``, both the ``dynamo=True`` and TorchScript exporters).
``SelectTopK`` still holds the learned projection ``p`` (``select.weight``).
For ``gat``, ``collate`` also returns a degree-bucketed incoming-edge layout (``gat_order``,
``gat_bucket0..3``; :mod:`hub_graph._gat`): exported, the GATv2 layers run on it without scatter ops
(ONNX Runtime's ``ScatterElements`` is slow on CPU); eager PyTorch keeps PyG's layers.

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
from torch_geometric.nn import MLP, GINConv, GPSConv
from torch_geometric.nn.pool.select import SelectTopK
from torch_geometric.nn.models import GAT, GIN, GraphSAGE

from hub import Encoder, TokenEmbeddings
from hub.errors import InvalidOptionsError, WeightsNotFoundError
from hub.processor import Processor

from ._gat import LAYOUT_KEYS, exporting, gat_forward, incoming_layout
from ._items import ItemProblem, to_graph
from ._meta import ACCEPTS, PRESETS, GraphOptions

__all__ = ["GPS", "GraphConfig", "GraphEncoder", "dense_layout", "gps_layer", "make_factory"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = "modality-hub-graph"
Arch = Literal["gin", "gat", "sage", "gps"]


class GPS(torch.nn.Module):
    """A GPS graph transformer (Rampášek et al. 2022): per layer, a local GIN
    message pass plus global multi-head attention over the graph's nodes
    (``torch_geometric.nn.GPSConv``), after a linear input projection.

    Given the batch's dense layout (``layout=dense_layout(batch, node_mask)``),
    each layer runs :func:`gps_layer`: ``GPSConv.forward`` with the padding done by
    index ops whose sizes come from ``node_mask``'s shape.  (PyG's ``to_dense_batch``
    reads the largest graph with ``int(...)`` and ``MultiheadAttention`` reshapes
    with Python arithmetic on sizes; ONNX tracing freezes both into constants.)
    Without ``layout`` it runs the PyG layers as they are.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, heads: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(in_channels, hidden_channels)
        self.layers = torch.nn.ModuleList(
            GPSConv(hidden_channels, GINConv(MLP([hidden_channels] * 3)), heads=heads, attn_type="multihead")
            for _ in range(num_layers)
        )

    def forward(
        self,
        x: torch.Tensor,  # (nodes, in_channels)
        edge_index: torch.Tensor,  # (2, edges)
        batch: torch.Tensor | None = None,  # (nodes,)
        layout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # dense_layout(batch, node_mask)
    ) -> torch.Tensor:
        h = self.lin(x)  # (nodes, hidden)
        for layer in self.layers:
            h = layer(h, edge_index, batch) if layout is None else gps_layer(layer, h, edge_index, *layout)
        return h


def dense_layout(batch: torch.Tensor, node_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the nodes of a PyG batch sit in a padded ``(graphs, width)`` layout.

    ``node_mask`` (graphs, width) is True on the first ``n_g`` slots of row ``g``.
    Returns ``node_of_slot`` (graphs, width): the node in each slot (0 in padding),
    ``slot_of_node`` (nodes,): each node's flat slot, and ``node_mask``.
    Only gathers and cumulative sums: every size comes from the inputs' shapes.
    """
    flat = node_mask.reshape(-1).long()  # (graphs * width,)
    node_of_slot = (torch.cumsum(flat, 0) - 1).clamp(min=0).reshape(node_mask.shape)  # (graphs, width)
    counts = node_mask.long().sum(1)  # (graphs,)
    first = torch.cumsum(counts, 0) - counts  # (graphs,) first node of each graph
    local = torch.arange(batch.shape[0], device=batch.device) - first[batch]  # (nodes,)
    slot_of_node = batch * node_mask.shape[1] + local  # (nodes,)
    return node_of_slot, slot_of_node, node_mask


def gps_layer(
    layer: GPSConv,
    x: torch.Tensor,  # (nodes, dim)
    edge_index: torch.Tensor,  # (2, edges)
    node_of_slot: torch.Tensor,  # (graphs, width)
    slot_of_node: torch.Tensor,  # (nodes,)
    node_mask: torch.Tensor,  # (graphs, width)
) -> torch.Tensor:
    """``GPSConv.forward`` (eval; MultiheadAttention, batch-free norms) on a precomputed dense layout."""
    h = layer.conv(x, edge_index) + x  # local message passing + residual
    hs = [layer.norm1(h) if layer.norm1 is not None else h]
    dense = x[node_of_slot]  # (graphs, width, dim)
    att = _attention(layer.attn, dense, node_mask)  # (graphs, width, dim)
    h = att.reshape(-1, att.shape[-1])[slot_of_node] + x  # back to (nodes, dim) + residual
    hs.append(layer.norm2(h) if layer.norm2 is not None else h)
    out = hs[0] + hs[1]
    out = out + layer.mlp(out)
    return layer.norm3(out) if layer.norm3 is not None else out


def _attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``attn(x, x, x, key_padding_mask=~mask)`` of a batch-first ``MultiheadAttention`` (eval).

    Written out with the module's own weights and ``scaled_dot_product_attention``:
    ``F.multi_head_attention_forward`` reshapes with ``batch * heads`` computed in Python,
    which the TorchScript ONNX exporter freezes to the traced batch size.
    """
    qkv = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (graphs, width, 3 * dim)
    q, k, v = qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)  # (graphs, heads, width, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return attn.out_proj(out.transpose(1, 2).flatten(2))  # (graphs, width, dim)


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


class GraphProcessor(Processor):
    """Graphs → PyG ``Data`` with the node feature recipe; the weights-free half of :class:`GraphEncoder`."""

    modality = "graph"

    def __init__(self, config: GraphConfig) -> None:
        self.config = config

    def prepare(self, item: Any, index: int = 0) -> Data:
        try:
            return to_graph(item, in_channels=self.config.in_channels, undirected=self.config.undirected)
        except ItemProblem as p:
            raise self.invalid(index, item, p.problem, p.accepted) from None

    @property
    def dynamic_dims(self) -> dict[str, tuple[int, ...]]:
        """Collate dimensions the ONNX export keeps dynamic even where its probe batches agree (gat's buckets)."""
        return {k: (0, 1) for k in LAYOUT_KEYS[1:]} if self.config.arch == "gat" else {}

    def collate(self, prepared: Sequence[Data]) -> dict[str, torch.Tensor]:
        batch = Batch.from_data_list(list(prepared))
        nodes = torch.tensor([int(p.num_nodes) for p in prepared])  # (graphs,)
        node_mask = torch.arange(int(nodes.max()))[None, :] < nodes[:, None]  # (graphs, max nodes)
        tokens = torch.tensor([self.num_tokens(p) for p in prepared])  # (graphs,)
        token_mask = torch.arange(int(tokens.max()))[None, :] < tokens[:, None]  # (graphs, tokens)
        out = {"x": batch.x, "edge_index": batch.edge_index, "batch": batch.batch,
               "node_mask": node_mask, "token_mask": token_mask}
        if self.config.arch == "gat":  # the export's scatter-free attention reads it (hub_graph._gat)
            out.update(incoming_layout(batch.edge_index, int(batch.num_nodes)))
        return out

    def num_tokens(self, prepared: Data) -> int:
        return min(int(prepared.num_nodes), self.config.max_tokens) + int(self.config.graph_token)

    def length(self, prepared: Data) -> int:
        return int(prepared.num_nodes)

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """``config.json`` only (the feature recipe's width, token cap; no weights)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config.model_dump(), indent=2) + "\n", encoding="utf-8")
        return {}


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
        self.item_processor = GraphProcessor(config)
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
        save_file(state, path / WEIGHTS_NAME, metadata={"format": "pt"})
        return path

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,  # (nodes, in_channels), all graphs of the batch
        edge_index: torch.Tensor,  # (2, edges)
        batch: torch.Tensor,  # (nodes,) graph of each node
        node_mask: torch.Tensor,  # (graphs, max nodes): True on the first num_nodes slots
        token_mask: torch.Tensor,  # (graphs, tokens): True on each graph's num_tokens
        **gat_layout: torch.Tensor,  # gat: gat_order (nodes,), gat_bucket0.. (bucket nodes, width) (hub_graph._gat)
    ) -> TokenEmbeddings:
        layout = dense_layout(batch, node_mask)
        if self.config.arch == "gat" and gat_layout and exporting():
            # exported: the same attention without scatter ops (hub_graph._gat); eager keeps PyG's layers
            h = gat_forward(self.gnn, x, gat_layout["gat_order"], [gat_layout[k] for k in LAYOUT_KEYS[1:]])  # (nodes, dim)
        else:
            extra = {"layout": layout} if isinstance(self.gnn, GPS) else {}
            h = self.gnn(x, edge_index, batch=batch, **extra)  # (nodes, dim)
        slot_of_node = layout[1]  # scattered (not gathered) into the dense layout: every input is used
        dense = h.new_zeros(node_mask.shape[0] * node_mask.shape[1], h.shape[-1])  # (graphs * width, dim)
        dense = dense.index_put((slot_of_node,), h).reshape(node_mask.shape + (h.shape[-1],))  # (graphs, width, dim)
        # TopKPooling's score s = h·p / |p|, ranked before tanh: a saturated tanh (1.0 for many
        # nodes) would leave the choice to the sort's tie-breaking, which batching changes
        p = self.select.weight  # (1, dim)
        score = (dense * p).sum(-1) / p.norm(p=2, dim=-1)  # (graphs, width)
        # graphs above the cap keep their best nodes, best first; the others keep all, in node order
        position = node_mask.long().cumsum(1) - 1  # (graphs, width) node index within its graph
        above = node_mask.sum(1, keepdim=True) > self.max_tokens  # (graphs, 1)
        key = torch.where(above, score, -position.to(score.dtype)).masked_fill(~node_mask, float("-inf"))
        node_tokens = token_mask[:, int(self.graph_token):]  # (graphs, min(width, max_tokens))
        pick = key.topk(node_tokens.shape[1], dim=1).indices  # (graphs, k)
        gate = torch.tanh(score.gather(1, pick))  # gated as TopKPooling does
        kept = dense.gather(1, pick.unsqueeze(-1).expand(-1, -1, dense.shape[-1]))  # (graphs, k, dim)
        tokens = kept * (gate * node_tokens.to(gate.dtype)).unsqueeze(-1)  # (graphs, k, dim), padding zeroed
        if self.graph_token:
            count = node_mask.sum(1, keepdim=True).clamp(min=1).to(h.dtype)  # (graphs, 1)
            pooled = dense.sum(1) / count  # (graphs, dim) mean of all node embeddings
            tokens = torch.cat([pooled.unsqueeze(1), tokens], dim=1)
        return self.tokens(tokens, token_mask)


def _saved_config(directory: str | os.PathLike) -> GraphConfig:
    path = Path(directory).expanduser()
    if not (path / CONFIG_NAME).is_file():
        raise WeightsNotFoundError(f"graph encoder {os.fspath(directory)!r}: no {CONFIG_NAME} (written by save_pretrained)")
    try:
        return GraphConfig(**json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")))
    except (ValueError, TypeError, ValidationError) as exc:
        raise WeightsNotFoundError(f"{path / CONFIG_NAME} is not a {FORMAT} config: {exc}") from None


def make_processor_factory(name: str) -> Callable[..., GraphProcessor]:
    """The registry's processor factory of preset ``name``: the same options, only the config is built."""
    preset = PRESETS[name]

    def factory(weights: str | None = None, seed: int = 0, **options: Any) -> GraphProcessor:
        given = {k: v for k, v in options.items() if v is not None}
        if weights is not None:
            saved = _saved_config(weights)
            return GraphProcessor(saved.model_copy(update={k: v for k, v in given.items() if k not in ARCH_KEYS}))
        defaults = {"in_channels": 16, "hidden_channels": preset.hidden_channels,
                    "num_layers": preset.num_layers, "heads": preset.heads}
        return GraphProcessor(GraphConfig(arch=preset.arch, **{**defaults, **given}))

    return factory


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
