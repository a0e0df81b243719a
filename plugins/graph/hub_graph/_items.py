"""Graph items → one validated ``torch_geometric.data.Data`` (x, edge_index, num_nodes).

Node features (the *feature recipe*)
------------------------------------
An encoder reads ``in_channels`` features per node (16 by default).

* An item that brings features — ``Data.x``, a dict's ``"x"``, or networkx node
  attribute ``"x"`` on every node — is used as is: ``(num_nodes, F)`` numbers,
  finite, and ``F`` must equal the encoder's ``in_channels`` (otherwise an
  :class:`InvalidInputError` says expected vs got).
* Otherwise the features are built from the structure: the 7 structural
  columns of :data:`STRUCTURAL_FEATURES` (computed with networkx on the simple
  undirected graph), then the 9 atom columns of :data:`CHEM_FEATURES` (PyG's
  ``from_rdmol`` atom features scaled to [0, 1]; zero unless the item is a
  SMILES string).  The 16 columns are zero-padded or truncated to
  ``in_channels``.

Files (edge lists, GraphML, GML) are read with networkx; their node
attribute ``x`` is used only when it is a vector per node (a scalar ``x`` in
GraphML is a layout coordinate, e.g. from Gephi, and is ignored).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_undirected

from ._meta import FILE_SUFFIXES

__all__ = [
    "CHEM_FEATURES",
    "FILE_READERS",
    "FILE_SUFFIXES",
    "STRUCTURAL_FEATURES",
    "TEXT_FORMATS",
    "ItemProblem",
    "read_graph_text",
    "structural_features",
    "to_graph",
]

#: columns built from the structure when an item has no features
STRUCTURAL_FEATURES = (
    "constant (1)",
    "log(1 + degree)",
    "degree / max degree",
    "clustering coefficient",
    "log(1 + triangles)",
    "log(1 + core number)",
    "log(1 + mean neighbour degree)",
)
#: PyG ``from_rdmol`` atom features, each divided by its largest index (SMILES items only)
CHEM_FEATURES = (
    "atomic_num",
    "chirality",
    "degree",
    "formal_charge",
    "num_hs",
    "num_radical_electrons",
    "hybridization",
    "is_aromatic",
    "is_in_ring",
)
DICT_KEYS = ("edge_index", "x", "edge_attr", "num_nodes")
CHEM_INSTALL = "pip install 'modality-hub-graph[chem]'"


class ItemProblem(Exception):
    """What is wrong with one item (the encoder turns it into an InvalidInputError naming the item)."""

    def __init__(self, problem: str, accepted: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.accepted = accepted


# -- files ----------------------------------------------------------------------------------------
def _read_edgelist(path: Path) -> nx.Graph:
    # data=False: extra columns (weights, dicts) are ignored; direction is kept
    return nx.read_edgelist(path, data=False, create_using=nx.DiGraph)


def _read_gml(path: Path) -> nx.Graph:
    return nx.read_gml(path, label=None)  # label=None: node ids, so duplicate labels cannot fail


FILE_READERS: dict[str, tuple[str, Callable[[Path], nx.Graph]]] = {
    ".edgelist": ("edge list", _read_edgelist),
    ".edges": ("edge list", _read_edgelist),
    ".graphml": ("GraphML", nx.read_graphml),
    ".gml": ("GML", _read_gml),
}


#: ``format`` of :func:`read_graph_text` -> (name in messages, parser of a str)
TEXT_FORMATS: dict[str, tuple[str, Callable[[str], nx.Graph]]] = {
    "graphml": ("GraphML", nx.parse_graphml),
    "gml": ("GML", lambda text: nx.parse_gml(text, label=None)),
    "edgelist": ("edge list", lambda text: nx.parse_edgelist(text.splitlines(), data=False, create_using=nx.DiGraph)),
}


def read_graph_text(data: str | bytes, format: str) -> nx.Graph:
    """Parse graph file content with an explicit ``format`` (``graphml``, ``gml`` or ``edgelist``).

    The same networkx parsers as the file readers (``.graphml``, ``.gml``, ``.edgelist``), for
    content that arrives without a file name (an HTTP request, a database row).  ``bytes`` must
    be UTF-8.  Raises :class:`ItemProblem` saying what is wrong.
    """
    fmt = str(format).lower().lstrip(".")
    if fmt not in TEXT_FORMATS:
        raise ItemProblem(f"unknown graph format {format!r}", f"format one of {', '.join(TEXT_FORMATS)}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ItemProblem(f"{fmt} content is not UTF-8 ({exc})") from None
    if not isinstance(data, str):
        raise ItemProblem(f"{fmt} content must be str or bytes, got {type(data).__name__}")
    if not data.strip():
        raise ItemProblem(f"empty {fmt} content")
    kind, parser = TEXT_FORMATS[fmt]
    try:
        return parser(data)
    except Exception as exc:  # noqa: BLE001 - any parser failure means unreadable content
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ItemProblem(f"cannot read as {kind} ({type(exc).__name__}: {first})") from None


def _read_file(path: Path) -> nx.Graph:
    suffix = path.suffix.lower()
    if suffix not in FILE_READERS:
        raise ItemProblem(
            f"cannot read {suffix or 'extension-less'} files as a graph",
            f"graph files {', '.join(FILE_SUFFIXES)}",
        )
    if not path.is_file():
        raise ItemProblem("no such file")
    kind, reader = FILE_READERS[suffix]
    try:
        graph = reader(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ItemProblem(f"cannot read as {kind} ({type(exc).__name__}: {first})") from None
    return graph


# -- SMILES ---------------------------------------------------------------------------------------
def _from_smiles(text: str) -> tuple[torch.Tensor, int, torch.Tensor]:
    """SMILES → (edge_index, num_atoms, scaled atom features (N, 9)) through RDKit and PyG."""
    try:
        from rdkit import Chem, rdBase
    except ImportError:
        raise ItemProblem(
            f"SMILES strings need RDKit, which is not installed: {CHEM_INSTALL}",
            "SMILES str (with the chem extra), Data, networkx graph, dict with 'edge_index', graph file",
        ) from None
    from torch_geometric.utils.smiles import from_rdmol, x_map

    blocker = rdBase.BlockLogs()  # RDKit would print parse errors to stderr
    try:
        mol = Chem.MolFromSmiles(text)
    finally:
        del blocker
    if mol is None:
        raise ItemProblem("not a valid SMILES string (RDKit could not parse it)")
    data = from_rdmol(mol)
    scale = torch.tensor([max(1, len(x_map[k]) - 1) for k in CHEM_FEATURES], dtype=torch.float32)
    chem = data.x.float() / scale  # (N, 9) in [0, 1]
    return data.edge_index, int(mol.GetNumAtoms()), chem


# -- networkx -------------------------------------------------------------------------------------
def _node_x(graph: nx.Graph, nodes: list[Any], from_file: bool) -> np.ndarray | None:
    values = [graph.nodes[n].get("x") for n in nodes]
    present = sum(v is not None for v in values)
    if present == 0:
        return None
    if from_file and any(np.ndim(v) == 0 for v in values if v is not None):
        return None  # a scalar x in a file is a layout coordinate, not a feature vector
    if present < len(values):
        missing = next(n for n, v in zip(nodes, values) if v is None)
        raise ItemProblem(
            f"node attribute 'x' is on {present} of {len(values)} nodes (missing on node {missing!r}); "
            "give every node a feature vector 'x', or none"
        )
    rows = []
    for n, v in zip(nodes, values):
        try:
            row = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ItemProblem(f"node attribute 'x' of node {n!r} is not numeric ({type(v).__name__})") from None
        rows.append(row)
    widths = {r.shape[0] for r in rows}
    if len(widths) > 1:
        raise ItemProblem(f"node attribute 'x' has different lengths across nodes ({sorted(widths)})")
    return np.stack(rows)


def _from_networkx(graph: nx.Graph, from_file: bool = False) -> dict[str, Any]:
    nodes = list(graph.nodes)
    if not nodes:
        raise ItemProblem("the graph has no nodes")
    index = {n: i for i, n in enumerate(nodes)}
    pairs = [(index[u], index[v]) for u, v in graph.edges()]
    edge_index = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)  # (2, E)
    if not graph.is_directed():  # an undirected edge is a message both ways
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    return {"edge_index": edge_index, "x": _node_x(graph, nodes, from_file), "num_nodes": len(nodes)}


# -- tensors --------------------------------------------------------------------------------------
def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ItemProblem(f"{name} is not an array of numbers ({type(value).__name__}: {exc})") from None


def _edge_index(value: Any) -> torch.Tensor:
    if value is None:  # isolated nodes only (Data(x=...) without edges)
        return torch.zeros(2, 0, dtype=torch.long)
    ei = _as_tensor(value, "edge_index")
    if ei.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long)
    if ei.dtype == torch.bool or ei.is_floating_point() or ei.is_complex():
        raise ItemProblem(f"edge_index must hold integer node indices, got dtype {ei.dtype}")
    if ei.ndim != 2 or ei.shape[0] != 2:
        hint = "; transpose it (edge_index.T)" if ei.ndim == 2 and ei.shape[1] == 2 else ""
        raise ItemProblem(f"edge_index must have shape (2, num_edges), got {tuple(ei.shape)}{hint}")
    return ei.long()


def _num_nodes(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ItemProblem(f"num_nodes must be an int, got {type(value).__name__}")
    if value < 0:
        raise ItemProblem(f"num_nodes must be >= 0, got {value}")
    return int(value)


def _features(value: Any, num_nodes: int, name: str = "x") -> torch.Tensor:
    x = _as_tensor(value, name)
    if x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise ItemProblem(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ItemProblem(f"{name} must have shape (num_nodes, features), got {tuple(x.shape)}")
    if x.shape[0] != num_nodes:
        raise ItemProblem(f"{name} has {x.shape[0]} rows but the graph has {num_nodes} nodes")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
        raise ItemProblem(f"{name} holds NaN or inf (first at node {bad})")
    return x


def structural_features(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The 7 :data:`STRUCTURAL_FEATURES` per node, ``(num_nodes, 7)``, from the simple undirected graph."""
    g = nx.Graph()
    g.add_nodes_from(range(num_nodes))
    g.add_edges_from(edge_index.t().tolist())
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    degree = np.array([d for _, d in g.degree()], dtype=np.float64)
    triangles = nx.triangles(g)
    core, neighbour = nx.core_number(g), nx.average_neighbor_degree(g)
    # nx.clustering's own formula on the same counts (it would count the triangles a second time):
    # 2T / (d (d - 1)), 0 without triangles; the same float divisions, so the same values
    clustering = [2 * triangles[i] / (d * (d - 1)) if triangles[i] else 0.0
                  for i, d in ((i, int(degree[i])) for i in range(num_nodes))]
    cols = [
        np.ones(num_nodes),
        np.log1p(degree),
        degree / max(1.0, degree.max(initial=0.0)),
        np.array(clustering, dtype=np.float64),
        np.log1p([triangles[i] for i in range(num_nodes)]),
        np.log1p([core[i] for i in range(num_nodes)]),
        np.log1p([neighbour[i] for i in range(num_nodes)]),
    ]
    return torch.from_numpy(np.stack(cols, axis=1)).float()  # (N, 7)


def _fit(features: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad or truncate columns to ``width``."""
    if features.shape[1] >= width:
        return features[:, :width].contiguous()
    return torch.nn.functional.pad(features, (0, width - features.shape[1]))


# -- the entry point ------------------------------------------------------------------------------
def _fields(item: Any) -> dict[str, Any]:
    """Any accepted item → raw fields ``edge_index``, ``x``, ``edge_attr``, ``num_nodes``, ``chem``."""
    if isinstance(item, str) and not isinstance(item, os.PathLike):
        if Path(item).suffix.lower() in FILE_READERS and len(item) < 4096:
            return _from_networkx(_read_file(Path(item)), from_file=True)
        if not item.strip():
            raise ItemProblem("empty string (expected a SMILES string or a graph file path)")
        edge_index, n, chem = _from_smiles(item.strip())
        return {"edge_index": edge_index, "num_nodes": n, "chem": chem}
    if isinstance(item, os.PathLike):
        return _from_networkx(_read_file(Path(item)), from_file=True)
    if isinstance(item, Batch):
        raise ItemProblem(
            f"a torch_geometric Batch holds {item.num_graphs} graphs; pass batch.to_data_list() (one item per graph)"
        )
    if isinstance(item, Data):
        keys = set(item.keys())
        n = item.x.shape[0] if isinstance(item.x, torch.Tensor) and item.x.ndim >= 1 else None
        explicit = _num_nodes(item["num_nodes"]) if "num_nodes" in keys else None
        return {"edge_index": item.edge_index, "x": item.x, "edge_attr": item.edge_attr,
                "num_nodes": explicit if explicit is not None else n}
    if isinstance(item, nx.Graph):
        return _from_networkx(item)
    if isinstance(item, dict) and "format" in item and "edge_index" not in item:
        unknown = sorted(map(str, set(item) - {"data", "format"}))
        if unknown or "data" not in item:
            raise ItemProblem(f"a graph content dict takes exactly 'data' and 'format' (got keys {sorted(map(str, item))})",
                              f"{{'data': str, 'format': one of {', '.join(TEXT_FORMATS)}}}")
        return _from_networkx(read_graph_text(item["data"], item["format"]), from_file=True)
    if isinstance(item, dict):
        unknown = sorted(map(str, set(item) - set(DICT_KEYS)))
        if unknown:
            raise ItemProblem(f"unknown dict keys {unknown}", f"dict with keys {', '.join(DICT_KEYS)} ('edge_index' required)")
        if item.get("edge_index") is None:
            raise ItemProblem("the dict has no 'edge_index'", "dict with 'edge_index' of shape (2, num_edges)")
        return {k: item.get(k) for k in DICT_KEYS}
    raise ItemProblem(f"not a graph: {type(item).__name__}")


def to_graph(item: Any, *, in_channels: int, undirected: bool = True) -> Data:
    """Validate ``item`` and return ``Data(x (N, in_channels) float, edge_index (2, E) long, num_nodes=N)``.

    Raises :class:`ItemProblem` saying what is wrong.
    """
    f = _fields(item)
    edge_index = _edge_index(f.get("edge_index"))
    n = _num_nodes(f.get("num_nodes"))
    x = f.get("x")
    if n is None:
        if x is not None and hasattr(x, "__len__"):
            n = len(x)
        else:
            n = int(edge_index.max()) + 1 if edge_index.numel() else 0
    if n == 0:
        raise ItemProblem("the graph has no nodes", "a graph with at least one node")
    if edge_index.numel():
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0:
            raise ItemProblem(f"edge_index holds negative node indices (min {low}); indices must be in [0, {n})")
        if high >= n:
            raise ItemProblem(f"edge_index refers to node {high}, out of range for a graph of {n} nodes "
                              f"(indices must be in [0, {n}); set num_nodes or x to match)")
    if x is not None:
        x = _features(x, n)
        if x.shape[1] != in_channels:
            raise ItemProblem(
                f"node features have dim {x.shape[1]} but this encoder expects in_channels={in_channels}; "
                f"build the encoder with in_channels={x.shape[1]}, or drop 'x' to use structural features"
            )
    edge_attr = f.get("edge_attr")
    if edge_attr is not None:  # validated (a corrupt item is refused) but not read by the encoders
        ea = _as_tensor(edge_attr, "edge_attr")
        if ea.ndim == 0 or ea.shape[0] != edge_index.shape[1]:
            raise ItemProblem(f"edge_attr has shape {tuple(ea.shape)}; expected one row per edge ({edge_index.shape[1]})")
        if ea.is_floating_point() and not bool(torch.isfinite(ea).all()):
            raise ItemProblem("edge_attr holds NaN or inf")
    if undirected and edge_index.numel():
        edge_index = to_undirected(edge_index, num_nodes=n)
    if x is None:
        parts = [structural_features(edge_index, n)]
        chem = f.get("chem")
        parts.append(chem if chem is not None else torch.zeros(n, len(CHEM_FEATURES)))
        x = _fit(torch.cat(parts, dim=1), in_channels)
    return Data(x=x, edge_index=edge_index.contiguous(), num_nodes=n)
