"""GATv2 attention without scatter, for the ONNX export: a degree-bucketed layout and the layers on it.

PyG's ``GATv2Conv`` sums messages and normalises its softmax with scatter ops.  Exported,
they become ONNX ``ScatterElements``, which ONNX Runtime runs slowly on CPU (about 70% of a
256-d GAT's time); ``index_add`` exports ``ScatterND`` with ``reduction="add"``, which ONNX
Runtime's multithreaded CPU kernel sums wrongly on repeated indices.  So the export runs the
same attention on a layout built outside the graph, in ``collate`` (:func:`incoming_layout`):

* the edges ``GATv2Conv`` attends over (self-loops removed, one added per node; repeated edges
  kept), grouped by destination node;
* the nodes sorted by in-degree and cut into :data:`BUCKETS` buckets (cut points chosen to
  pad the least, by dynamic programming over the degrees); bucket ``b`` is ``gat_bucket{b}``
  (nodes_b, width_b): row ``r`` holds one node's source nodes, its self-loop first (so column 0
  is the node itself), padded with -1 to the bucket's largest degree;
* ``gat_order`` (N,): where each node's row sits in the buckets stacked in order.

Per layer (:func:`gatv2_layer`), each bucket gathers its rows' source features once
(``x_l[sources]``, nodes_b x width_b x hidden), adds the node's own ``x_r``, applies LeakyReLU
and the attention vector (one MatMul), takes the masked softmax along the row (PyG's per-node
maximum shift and ``+ 1e-16``) and sums the weighted sources with ``ReduceSum``; the buckets'
rows are stacked and gathered back to node order.  Every per-edge tensor lives in the padded
buckets (about 1.1x the edges on random graphs, against 4x for one padding to the largest
degree); there is no per-edge gather of ``x_r``, no prefix sum and no float64.  No op depends on
the order in which threads run, so results are deterministic.  Buckets have at least 2 rows and
2 columns (dummy rows repeat node 0's self-loop; their results are never gathered), and their
sizes are dynamic in the export (:attr:`GraphProcessor.dynamic_dims`).

Eager PyTorch keeps PyG's own layers (faster there); the export's parity check compares the
two on fresh graphs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BUCKETS", "LAYOUT_KEYS", "bucket_cuts", "exporting", "gat_forward", "gatv2_layer", "incoming_layout"]

#: degree buckets of the export's layout (a fixed number: one graph input each)
BUCKETS = 4
#: the collate keys of the layout
LAYOUT_KEYS = ("gat_order",) + tuple(f"gat_bucket{b}" for b in range(BUCKETS))
#: candidate cut points considered by :func:`bucket_cuts` (distinct degrees beyond it are subsampled)
_MAX_CANDIDATES = 48


def exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx.export`` (either exporter) traces the forward."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def bucket_cuts(degrees: np.ndarray, buckets: int = BUCKETS) -> list[int]:
    """Cut points of ascending ``degrees`` into at most ``buckets`` contiguous runs, padding the least.

    Returns the end index of each run (the last is ``len(degrees)``); a run's cost is its length
    times its largest degree.  Cuts fall between distinct degrees (dynamic programming over them).
    """
    n = degrees.size
    ends = np.flatnonzero(np.diff(degrees)) + 1  # run boundaries between distinct degrees
    ends = np.append(ends, n)
    if ends.size > _MAX_CANDIDATES:  # many distinct degrees: keep a spread of them (and the end)
        ends = np.unique(np.append(ends[np.linspace(0, ends.size - 1, _MAX_CANDIDATES).astype(int)], n))
    width = degrees[ends - 1]  # largest degree up to each candidate end
    m = ends.size
    # best[k][j]: least cost of nodes [0, ends[j]) in at most k + 1 runs; back[k][j]: the previous run's end (-1: none)
    best = [[float(ends[j] * width[j]) for j in range(m)]]
    back = [[-1] * m]
    for k in range(1, buckets):
        row, prev = list(best[0]), [-1] * m
        for j in range(m):
            for i in range(j):
                c = best[k - 1][i] + float((ends[j] - ends[i]) * width[j])
                if c < row[j]:
                    row[j], prev[j] = c, i
        best.append(row)
        back.append(prev)
    cuts, k, j = [], buckets - 1, m - 1
    while j >= 0:
        cuts.append(int(ends[j]))
        j, k = back[k][j], k - 1
    return sorted(set(cuts))


def incoming_layout(edge_index: torch.Tensor, num_nodes: int) -> dict[str, torch.Tensor]:
    """``gat_order`` (N,) and ``gat_bucket0..`` (nodes_b, width_b) of a batch's ``edge_index``.

    The edges are those ``GATv2Conv(add_self_loops=True)`` attends over: self-loops removed,
    one self-loop per node (column 0 of its row).  Repeated edges stay repeated (PyG sums each).
    Padding is -1.  Unused buckets hold a 2 x 2 dummy ``[[0, -1], [0, -1]]``.
    """
    # numpy: single-threaded, a few ms for tens of thousands of edges
    ei = edge_index.cpu().numpy()
    keep = ei[0] != ei[1]
    src, dst = ei[0][keep], ei[1][keep]
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]  # non-loop edges grouped by destination
    others = np.bincount(dst, minlength=num_nodes)  # (N,) incoming non-loop edges
    first = np.cumsum(others) - others  # (N,) each node's first edge in src
    rank = np.arange(src.size, dtype=np.int64) - first[dst]  # (E,) rank among its node's edges
    degree = others + 1  # with the self-loop
    by_degree = np.argsort(degree, kind="stable")  # nodes, ascending degree
    cuts = bucket_cuts(degree[by_degree])
    rows_of = np.empty(num_nodes, dtype=np.int64)  # each node's bucket and row
    row_in = np.empty(num_nodes, dtype=np.int64)
    out: dict[str, torch.Tensor] = {}
    offset, start = 0, 0
    position = np.empty(num_nodes, dtype=np.int64)
    for b in range(BUCKETS):
        if b < len(cuts):
            nodes = by_degree[start : cuts[b]]
            start = cuts[b]
        else:
            nodes = by_degree[:0]
        width = max(int(degree[nodes].max()) if nodes.size else 0, 2)
        rows = max(nodes.size, 2)
        table = np.full((rows, width), -1, dtype=np.int64)
        table[:, 0] = 0  # dummy rows: node 0's self-loop
        table[: nodes.size, 0] = nodes
        rows_of[nodes], row_in[nodes] = b, np.arange(nodes.size)
        position[nodes] = offset + np.arange(nodes.size)
        out[f"gat_bucket{b}"] = table
        offset += rows
    # every non-loop edge into its destination's row, after the self-loop
    tables = [out[f"gat_bucket{b}"] for b in range(BUCKETS)]
    eb, er = rows_of[dst], row_in[dst]
    for b in range(BUCKETS):
        sel = eb == b
        tables[b][er[sel], 1 + rank[sel]] = src[sel]
    result = {"gat_order": torch.from_numpy(position)}
    result.update({f"gat_bucket{b}": torch.from_numpy(tables[b]) for b in range(BUCKETS)})
    return result


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` as ONNX ``Gather`` (advanced indexing exports the slower ``GatherND``)."""
    return table.index_select(0, index.reshape(-1)).reshape(tuple(index.shape) + tuple(table.shape[1:]))


def _prepared(buckets: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per bucket, once per forward: its source nodes (padding read as node 0), its nodes, and the
    additive score mask (0 on real slots, -inf on padding), (n, w, 1)."""
    out = []
    for table in buckets:  # (n, w) source nodes, self first, -1 padding
        real = (table >= 0).unsqueeze(-1)  # (n, w, 1)
        bias = torch.zeros_like(real, dtype=torch.float32).masked_fill(~real, float("-inf"))
        out.append((table.clamp(min=0), table[:, 0], bias))
    return out


def gatv2_layer(conv: Any, x: torch.Tensor, order: torch.Tensor,
                buckets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``GATv2Conv.forward(x, edge_index)`` (eval, no edge features) on the bucketed layout (:func:`_prepared`)."""
    if conv.lin_edge is not None:
        raise NotImplementedError("the bucketed GATv2 layout does not take edge features")
    H, C = conv.heads, conv.out_channels
    x_l = conv.lin_l(x)  # (N, H * C)
    x_r = x_l if conv.share_weights else conv.lin_r(x)
    # the attention vector per head as one (H * C, H) block-diagonal matrix: a MatMul, not Mul + ReduceSum
    att = conv.att.reshape(H, C, 1) * torch.eye(H, dtype=conv.att.dtype, device=conv.att.device).reshape(H, 1, H)
    att = att.reshape(H * C, H)
    parts = []
    for sources, nodes, bias in buckets:  # (n, w), (n,), (n, w, 1)
        x_j = _rows(x_l, sources)  # (n, w, H * C)
        x_i = _rows(x_r, nodes)  # (n, H * C)
        hidden = F.leaky_relu(x_j + x_i.unsqueeze(1), conv.negative_slope)
        score = hidden @ att + bias.to(hidden.dtype)  # (n, w, H), -inf on padding
        weight = (score - score.amax(1, keepdim=True)).exp()  # PyG's shift by the per-node max
        alpha = weight / (weight.sum(1, keepdim=True) + 1e-16)  # (n, w, H)
        parts.append((x_j.reshape(sources.shape[0], sources.shape[1], H, C) * alpha.unsqueeze(-1)).sum(1))  # (n, H, C)
    out = _rows(torch.cat(parts, 0), order)  # (N, H, C) back in node order
    out = out.reshape(-1, H * C) if conv.concat else out.mean(1)
    if conv.res is not None:
        out = out + conv.res(x)
    if conv.bias is not None:
        out = out + conv.bias
    return out


def gat_forward(gnn: Any, x: torch.Tensor, order: torch.Tensor, buckets: list[torch.Tensor]) -> torch.Tensor:
    """``torch_geometric.nn.models.GAT.forward`` (eval, batch-free norms, no jumping knowledge) on the layout."""
    if gnn.jk_mode is not None or hasattr(gnn, "lin"):
        raise NotImplementedError("the bucketed GAT layout covers GAT without jumping knowledge or output layer")
    last = len(gnn.convs) - 1
    prepared = _prepared(buckets)
    for i, (conv, norm) in enumerate(zip(gnn.convs, gnn.norms)):
        x = gatv2_layer(conv, x, order, prepared)
        if i < last:
            if gnn.act is not None and gnn.act_first:
                x = gnn.act(x)
            x = norm(x)
            if gnn.act is not None and not gnn.act_first:
                x = gnn.act(x)
    return x
