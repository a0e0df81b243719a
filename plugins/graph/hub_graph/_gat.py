"""GATv2 attention without scatter, for the ONNX export: the incoming-edge layout and the layers on it.

PyG's ``GATv2Conv`` sums messages and normalises its softmax with scatter ops.  Exported,
they become ONNX ``ScatterElements``, which ONNX Runtime runs slowly on CPU (about 70% of a
256-d GAT's time); ``index_add`` exports ``ScatterND`` with ``reduction="add"``, which ONNX
Runtime's multithreaded CPU kernel sums wrongly on repeated indices.  So the export runs the
same attention on a layout built outside the graph, in ``collate`` (:func:`incoming_layout`):

* ``in_edges`` (2, E'): the edges as ``GATv2Conv`` sees them (self-loops removed, one added
  per node), sorted by destination node, so each node's incoming edges are contiguous;
* ``in_slots`` (N, D): row ``n`` holds the positions in ``in_edges`` of node ``n``'s incoming
  edges, padded with 0 to the largest in-degree ``D``;
* ``in_mask`` (N, D): True on the real slots.

Per layer (:func:`gatv2_layer`), the per-edge work runs on the E' edges as PyG does (two
gathers, add, LeakyReLU, the attention vector as one MatMul).  The softmax's per-node
maximum and denominator read the H-wide scores through ``in_slots`` (masked max and sum, cheap:
H values per slot).  The messages, ``E' x hidden`` wide, are summed per node through a float64
prefix sum over the sorted edges, read at each node's last edge minus the one before its first
(exact to ~1e-12 here: a float32 prefix sum would lose ~1e-3 on batches of thousands of edges).
No op depends on the order in which threads run, so results are deterministic.

Eager PyTorch keeps PyG's own layers (faster there); the export's parity check compares the
two on fresh graphs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LAYOUT_KEYS", "exporting", "gat_forward", "gatv2_layer", "incoming_layout"]

#: the collate keys of the incoming-edge layout
LAYOUT_KEYS = ("in_edges", "in_slots", "in_mask")


def exporting() -> bool:
    """True while ``torch.export`` / ``torch.onnx.export`` (either exporter) traces the forward."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def incoming_layout(edge_index: torch.Tensor, num_nodes: int) -> dict[str, torch.Tensor]:
    """``in_edges`` (2, E'), ``in_slots`` (N, D) and ``in_mask`` (N, D) of a batch's ``edge_index``.

    The edges are those ``GATv2Conv(add_self_loops=True)`` attends over: self-loops removed,
    one self-loop per node appended; sorted stably by destination.  Every node has at least its
    self-loop, so ``D >= 1`` and every row of ``in_mask`` has a True.  Repeated edges stay
    repeated (PyG sums each).
    """
    # numpy: single-threaded, a few ms for tens of thousands of edges (torch's small parallel ops are slower here)
    ei = edge_index.cpu().numpy()
    keep = ei[0] != ei[1]
    loops = np.arange(num_nodes, dtype=np.int64)
    src = np.concatenate([ei[0][keep], loops])
    dst = np.concatenate([ei[1][keep], loops])
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]  # (E',) sorted by destination
    degree = np.bincount(dst, minlength=num_nodes)  # (N,) >= 1
    first = np.cumsum(degree) - degree  # (N,) each node's first edge
    edges = np.arange(src.size, dtype=np.int64)
    position = edges - first[dst]  # (E',) rank of each edge among its node's
    width = int(degree.max())
    slots = np.zeros((num_nodes, width), dtype=np.int64)
    slots[dst, position] = edges
    mask = np.zeros((num_nodes, width), dtype=bool)
    mask[dst, position] = True
    return {"in_edges": torch.from_numpy(np.stack([src, dst])), "in_slots": torch.from_numpy(slots),
            "in_mask": torch.from_numpy(mask)}


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` as ONNX ``Gather`` (advanced indexing exports the slower ``GatherND``)."""
    return table.index_select(0, index.reshape(-1)).reshape(tuple(index.shape) + tuple(table.shape[1:]))


def _segments(in_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each node's last edge, the edge before its first (clamped to 0), and whether that one exists."""
    degree = in_mask.long().sum(1)  # (N,)
    last = torch.cumsum(degree, 0) - 1  # (N,)
    before = last - degree  # (N,) -1 for the first node
    return last, before.clamp(min=0), (before >= 0)


def gatv2_layer(conv: Any, x: torch.Tensor, in_edges: torch.Tensor, in_slots: torch.Tensor,
                in_mask: torch.Tensor, segments: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``GATv2Conv.forward(x, edge_index)`` (eval, no edge features) on the incoming-edge layout."""
    if conv.lin_edge is not None:
        raise NotImplementedError("the incoming-edge GATv2 layout does not take edge features")
    H, C = conv.heads, conv.out_channels
    x_l = conv.lin_l(x)  # (N, H * C)
    x_r = x_l if conv.share_weights else conv.lin_r(x)
    src, dst = in_edges[0], in_edges[1]
    x_j = _rows(x_l, src)  # (E', H * C)
    hidden = F.leaky_relu(_rows(x_r, dst) + x_j, conv.negative_slope)
    # the attention vector per head as one (H * C, H) block-diagonal matrix: a MatMul, not Mul + ReduceSum
    att = conv.att.reshape(H, C, 1) * torch.eye(H, dtype=conv.att.dtype, device=conv.att.device).reshape(H, 1, H)
    score = hidden @ att.reshape(H * C, H)  # (E', H)
    real = in_mask.unsqueeze(-1).to(score.dtype)  # (N, D, 1)
    peak = (_rows(score, in_slots) * real + (real - 1.0) * 1e30).amax(1)  # (N, H) per-node max (PyG's shift)
    weight = (score - _rows(peak, dst)).exp()  # (E', H)
    total = (_rows(weight, in_slots) * real).sum(1) + 1e-16  # (N, H) softmax denominators
    message = (x_j.reshape(-1, H, C) * weight.unsqueeze(-1)).reshape(-1, H * C)  # (E', H * C)
    last, before, has_before = segments
    prefix = message.double().cumsum(0)  # (E', H * C)
    summed = _rows(prefix, last) - _rows(prefix, before) * has_before.unsqueeze(-1).to(prefix.dtype)  # (N, H * C)
    out = summed.to(x_l.dtype).reshape(-1, H, C) / total.unsqueeze(-1)  # (N, H, C)
    out = out.reshape(-1, H * C) if conv.concat else out.mean(1)
    if conv.res is not None:
        out = out + conv.res(x)
    if conv.bias is not None:
        out = out + conv.bias
    return out


def gat_forward(gnn: Any, x: torch.Tensor, in_edges: torch.Tensor, in_slots: torch.Tensor,
                in_mask: torch.Tensor) -> torch.Tensor:
    """``torch_geometric.nn.models.GAT.forward`` (eval, batch-free norms, no jumping knowledge) on the layout."""
    if gnn.jk_mode is not None or hasattr(gnn, "lin"):
        raise NotImplementedError("the incoming-edge GAT layout covers GAT without jumping knowledge or output layer")
    segments = _segments(in_mask)
    last = len(gnn.convs) - 1
    for i, (conv, norm) in enumerate(zip(gnn.convs, gnn.norms)):
        x = gatv2_layer(conv, x, in_edges, in_slots, in_mask, segments)
        if i < last:
            if gnn.act is not None and gnn.act_first:
                x = gnn.act(x)
            x = norm(x)
            if gnn.act is not None and not gnn.act_first:
                x = gnn.act(x)
    return x
