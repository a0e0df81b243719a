"""The graph plugin: conformance of every preset, every item type, the node cap, weights, bad inputs."""

from __future__ import annotations

import sys

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from hub import Hub, InvalidInputError
from hub.errors import InvalidOptionsError, UnknownModalityError, WeightsNotFoundError
from hub.testing import EncoderConformance, check_batch_equals_singles, check_num_tokens

pytest.importorskip("hub_graph")

from hub_graph import FILE_SUFFIXES, PRESETS, is_graph, sample_graph  # noqa: E402
from hub_graph._items import CHEM_FEATURES, FILE_READERS, STRUCTURAL_FEATURES, structural_features  # noqa: E402

PRESET_NAMES = sorted(PRESETS)


def ring(n: int) -> torch.Tensor:
    """A cycle's edge_index, both directions: (2, 2n)."""
    src = torch.arange(n)
    dst = (src + 1) % n
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])


def featured(n: int, seed: int = 0, dim: int = 16) -> Data:
    g = torch.Generator().manual_seed(seed)
    return Data(x=torch.randn(n, dim, generator=g), edge_index=ring(n))


def good_items() -> list:
    return [
        nx.path_graph(3),
        nx.karate_club_graph(),
        featured(12),
        {"edge_index": [[0, 1, 2], [1, 2, 3]], "num_nodes": 6},  # nodes 4, 5 isolated
    ]


def bad_item_list(tmp_path) -> list:
    corrupt_graphml = tmp_path / "corrupt.graphml"
    corrupt_graphml.write_text("<graphml><graph><node id='a'>not closed", encoding="utf-8")
    corrupt_gml = tmp_path / "corrupt.gml"
    corrupt_gml.write_text("graph [ node [ id 0 ] edge [ source 0 target ", encoding="utf-8")
    nan_x = featured(4)
    nan_x.x[2, 3] = float("nan")
    inf_x = featured(4)
    inf_x.x[0, 0] = float("inf")
    return [
        {"edge_index": [[0, 5], [1, 0]], "num_nodes": 3},  # out of range
        {"edge_index": [[0, -1], [1, 0]]},  # negative index
        nx.Graph(),  # no nodes
        Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=0),  # no nodes
        nan_x,
        inf_x,
        {"edge_index": [[0, 1, 2]]},  # shape (1, 3)
        {"edge_index": torch.tensor([[0, 1], [1, 2], [2, 0]])},  # (E, 2): transposed
        {"edge_index": torch.tensor([[0.0, 1.0], [1.0, 0.0]])},  # float indices
        Data(x=torch.randn(4, 3), edge_index=ring(4)),  # feature dim 3 != in_channels 16
        corrupt_graphml,
        corrupt_gml,
        {"edge_index": [[0], [1]], "weights": [1.0]},  # unknown key
        12345,  # not a graph
    ]


# -- conformance ---------------------------------------------------------------------------------------
class TestGraphConformance(EncoderConformance):
    @pytest.fixture(params=PRESET_NAMES)
    def encoder(self, request):
        return Hub().encoder(request.param)

    @pytest.fixture
    def items(self):
        return good_items()

    @pytest.fixture
    def bad_items(self, tmp_path):
        return bad_item_list(tmp_path)


class TestCappedGraphTokenConformance(EncoderConformance):
    """Above the node cap (top-k) and with a graph token, every preset still conforms."""

    @pytest.fixture(params=PRESET_NAMES)
    def encoder(self, request):
        return Hub().encoder(request.param, max_tokens=6, graph_token=True)

    @pytest.fixture
    def items(self):
        return [featured(20, seed=1), nx.path_graph(4), featured(9, seed=2), nx.karate_club_graph()]

    @pytest.fixture
    def bad_items(self, tmp_path):
        return bad_item_list(tmp_path)[:3]


# -- item types -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gin():
    return Hub().encoder("gin")


def test_every_in_memory_item_type(gin):
    rng = np.random.default_rng(0)
    with_x = nx.cycle_graph(7)
    for i in with_x.nodes:
        with_x.nodes[i]["x"] = rng.standard_normal(16).tolist()
    directed = nx.DiGraph([(0, 1), (1, 2), (2, 0), (2, 3)])
    multi = nx.MultiGraph([(0, 1), (0, 1), (1, 2)])
    items = {
        "Data with x": featured(10),
        "Data without x": Data(edge_index=ring(5), num_nodes=5),
        "Data without edges": Data(x=torch.ones(2, 16)),
        "networkx with x": with_x,
        "networkx without x": nx.star_graph(4),
        "networkx DiGraph": directed,
        "networkx MultiGraph": multi,
        "dict": {"edge_index": np.array([[0, 1], [1, 2]]), "num_nodes": 4},
        "dict with x and edge_attr": {"edge_index": ring(6), "x": np.ones((6, 16), np.float32), "edge_attr": np.ones((12, 2))},
    }
    expected = [10, 5, 2, 7, 5, 4, 3, 4, 6]
    te = gin.encode(list(items.values()))
    assert te.lengths.tolist() == expected
    assert [gin.count_tokens(x) for x in items.values()] == expected
    assert torch.isfinite(te.tokens[te.mask]).all()


def test_networkx_x_is_used_as_features(gin):
    g = nx.path_graph(5)
    for i in g.nodes:
        g.nodes[i]["x"] = [float(i)] * 16
    data = Data(x=torch.tensor([[float(i)] * 16 for i in range(5)]), edge_index=ring(5)[:, [0, 1, 2, 3, 5, 6, 7, 8]])
    a, b = gin.encode([g])[0], gin.encode([data])[0]
    assert torch.allclose(a, b, atol=1e-5)
    plain = gin.encode([nx.path_graph(5)])[0]  # structural features instead
    assert not torch.allclose(a, plain, atol=1e-3)


@pytest.mark.parametrize("suffix", FILE_SUFFIXES)
def test_graph_files_through_networkx(gin, tmp_path, suffix):
    graph = nx.karate_club_graph()
    path = tmp_path / f"karate{suffix}"
    writers = {".edgelist": nx.write_edgelist, ".edges": nx.write_edgelist, ".graphml": nx.write_graphml, ".gml": nx.write_gml}
    writers[suffix](graph, path)
    h = Hub()
    assert h.detect(str(path)) == "graph"
    te = h.embed(str(path))  # routed by suffix, no modality=
    assert te.modality == "graph" and te.lengths.tolist() == [34]
    # same graph in memory: same pooled vector (node order may differ in an edge list)
    ref = gin.encode([graph]).pooled()
    assert torch.allclose(te.pooled(), ref, atol=1e-4)


def test_gml_vector_x_is_read_and_scalar_graphml_x_is_a_layout_coordinate(gin, tmp_path):
    g = nx.path_graph(4)
    for i in g.nodes:
        g.nodes[i]["x"] = [float(i + 1)] * 16
    nx.write_gml(g, tmp_path / "g.gml")
    assert torch.allclose(gin.encode([tmp_path / "g.gml"])[0], gin.encode([g])[0], atol=1e-5)
    layout = nx.path_graph(4)
    for i in layout.nodes:
        layout.nodes[i]["x"] = 10.0 * i  # Gephi-style position
    nx.write_graphml(layout, tmp_path / "layout.graphml")
    assert torch.allclose(gin.encode([tmp_path / "layout.graphml"])[0], gin.encode([nx.path_graph(4)])[0], atol=1e-5)


def test_file_readers_match_registered_extensions():
    assert tuple(FILE_READERS) == FILE_SUFFIXES


# -- feature recipe -----------------------------------------------------------------------------------------
def test_structural_features_recipe():
    # triangle 0-1-2 with a tail 2-3
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 0, 2, 3], [1, 0, 2, 1, 0, 2, 3, 2]])
    f = structural_features(edge_index, 4)
    assert f.shape == (4, len(STRUCTURAL_FEATURES)) == (4, 7)
    assert torch.equal(f[:, 0], torch.ones(4))
    assert torch.allclose(f[:, 1], torch.log1p(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    assert torch.allclose(f[:, 2], torch.tensor([2 / 3, 2 / 3, 1.0, 1 / 3]))
    assert torch.allclose(f[:, 3], torch.tensor([1.0, 1.0, 1 / 3, 0.0]))
    assert torch.allclose(f[:, 4], torch.log1p(torch.tensor([1.0, 1.0, 1.0, 0.0])))
    assert torch.allclose(f[:, 5], torch.log1p(torch.tensor([2.0, 2.0, 2.0, 1.0])))


@pytest.mark.parametrize("in_channels", [4, 16, 24])
def test_structural_features_fit_any_in_channels(in_channels):
    enc = Hub().encoder("sage", in_channels=in_channels)
    prepared = enc.prepare(nx.petersen_graph())
    assert prepared.x.shape == (10, in_channels)
    assert len(STRUCTURAL_FEATURES) + len(CHEM_FEATURES) == 16
    if in_channels > 16:
        assert torch.all(prepared.x[:, 16:] == 0)
    assert enc.encode([nx.petersen_graph()]).lengths.tolist() == [10]


def test_feature_dim_mismatch_names_expected_and_got(gin):
    with pytest.raises(InvalidInputError, match=r"item 0 .*dim 3.*in_channels=16"):
        gin.prepare(Data(x=torch.randn(4, 3), edge_index=ring(4)), 0)
    enc3 = Hub().encoder("gin", in_channels=3)
    assert enc3.encode([Data(x=torch.randn(4, 3), edge_index=ring(4))]).lengths.tolist() == [4]


# -- node cap and graph token ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_node_cap_and_graph_token_counts(name):
    h = Hub()
    big, small = nx.path_graph(300), nx.path_graph(5)
    plain = h.encoder(name)
    assert [plain.count_tokens(g) for g in (big, small)] == [128, 5]
    assert plain.encode([big, small]).lengths.tolist() == [128, 5]
    capped = h.encoder(name, max_tokens=7, graph_token=True)
    assert [capped.count_tokens(g) for g in (big, small)] == [8, 6]
    te = capped.encode([big, small])
    assert te.lengths.tolist() == [8, 6] and te.tokens.shape == (2, 8, capped.dim)
    assert capped.pooling == "cls" and torch.equal(te.pooled(), te.tokens[:, 0])


def test_top_k_reduction_is_the_documented_one():
    enc = Hub().encoder("gin", max_tokens=5, graph_token=True)
    data = featured(17, seed=3)
    tensors = enc.preprocess([data])
    with torch.inference_mode():
        h = enc.gnn(tensors["x"], tensors["edge_index"], batch=tensors["batch"])  # (17, dim)
        score = (h * enc.select.weight).sum(-1) / enc.select.weight.norm()
        keep = score.topk(5).indices  # the 5 best nodes, best first
        te = enc.encode([data])
    assert torch.allclose(te.tokens[0, 0], h.mean(0), atol=1e-5)  # graph token: mean of all nodes
    assert torch.allclose(te.tokens[0, 1:], h[keep] * torch.tanh(score[keep, None]), atol=1e-5)


def test_batch_equals_singles_with_many_sizes():
    enc = Hub().encoder("gps", max_tokens=10)
    items = [featured(n, seed=n) for n in (1, 2, 9, 10, 11, 40)]
    check_batch_equals_singles(enc, items, atol=1e-4)
    check_num_tokens(enc, items)


# -- routing ---------------------------------------------------------------------------------------------------
def test_hub_detect_routes_graphs(tmp_path):
    h = Hub()
    assert h.detect(featured(3)) == "graph"
    assert h.detect(nx.path_graph(3)) == "graph"
    assert h.detect(nx.DiGraph([(0, 1)])) == "graph"
    assert h.detect({"edge_index": [[0], [1]]}) == "graph"
    for suffix in FILE_SUFFIXES:
        path = tmp_path / f"g{suffix}"
        nx.write_edgelist(nx.path_graph(3), path) if "edge" in suffix else (
            nx.write_graphml if suffix == ".graphml" else nx.write_gml)(nx.path_graph(3), path)
        assert h.detect(path) == "graph"
    te = h.embed([nx.path_graph(3), featured(5), {"edge_index": [[0], [1]]}])
    assert te.modality == "graph" and te.lengths.tolist() == [3, 5, 2]


def test_detect_claims_only_graphs():
    assert is_graph(featured(2)) and is_graph(nx.Graph()) and is_graph({"edge_index": []})
    assert not is_graph({"array": np.zeros(10), "sampling_rate": 16000})
    assert not is_graph({"array": np.zeros(10), "edge_index": []})
    for other in ("CCO", b"\x89PNG", np.zeros((4, 3)), torch.zeros(3, 8, 8), [1, 2], None):
        assert not is_graph(other)
    h = Hub()
    if "text" in h.modalities():
        assert h.detect("CCO") == "text"  # a str is text; SMILES need modality="graph"
    else:
        with pytest.raises(UnknownModalityError):
            h.detect("CCO")


def test_modality_metadata_and_sample():
    h = Hub()
    mod = h.registry.modality("graph")
    assert mod.default_encoder == "gin" and mod.demo_encoder == "gin"
    assert set(mod.extensions) == {".edgelist", ".edges", ".graphml", ".gml"}
    sample = mod.sample()
    assert is_graph(sample) and sample.number_of_nodes() == 34
    te = h.embed(sample_graph(), encoder=mod.demo_encoder)
    assert te.lengths.tolist() == [34] and te.dim == 32
    assert sorted(h.encoders(modality="graph")) == PRESET_NAMES


# -- bad inputs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(14))
def test_every_bad_input_is_refused_by_name(gin, tmp_path, index):
    bad = bad_item_list(tmp_path)[index]
    with pytest.raises(InvalidInputError, match=r"^item 3 \("):
        gin.prepare(bad, 3)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"edge_index": [[0, 5], [1, 0]], "num_nodes": 3}, "refers to node 5, out of range for a graph of 3 nodes"),
        ({"edge_index": [[0, -1], [1, 0]]}, "negative node indices"),
        (nx.Graph(), "no nodes"),
        ({"edge_index": [[0, 1, 2]]}, r"shape \(2, num_edges\), got \(1, 3\)"),
        ({"edge_index": torch.tensor([[0, 1], [1, 2], [2, 0]])}, "transpose"),
        (Batch.from_data_list([featured(2), featured(3)]), "to_data_list"),
        ({"edge_index": ring(3), "x": np.ones((2, 16)), "num_nodes": 3}, "x has 2 rows but the graph has 3 nodes"),
        ({"edge_index": ring(3), "edge_attr": np.ones((5, 2))}, "one row per edge"),
        ({"x": np.ones((2, 16))}, "no 'edge_index'"),
    ],
)
def test_bad_input_messages(gin, item, message):
    with pytest.raises(InvalidInputError, match=message):
        gin.prepare(item, 0)


def test_nan_and_corrupt_file_messages(gin, tmp_path):
    bad = bad_item_list(tmp_path)
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        gin.prepare(bad[4], 0)
    with pytest.raises(InvalidInputError, match="cannot read as GraphML"):
        gin.prepare(bad[10], 0)
    with pytest.raises(InvalidInputError, match="cannot read as GML"):
        gin.prepare(bad[11], 0)
    with pytest.raises(InvalidInputError, match="cannot read .txt files as a graph"):
        (tmp_path / "g.txt").write_text("0 1\n")
        gin.prepare(tmp_path / "g.txt", 0)
    te = Hub().embed([nx.path_graph(3), bad[10], nx.path_graph(4)], modality="graph", on_error="skip")
    assert te.indices == [0, 2] and [e.index for e in te.errors] == [1]


def test_partial_node_features_are_refused(gin):
    g = nx.path_graph(3)
    g.nodes[0]["x"] = [1.0] * 16
    with pytest.raises(InvalidInputError, match="on 1 of 3 nodes"):
        gin.prepare(g, 0)


# -- options and weights ------------------------------------------------------------------------------------------
def test_depth_width_and_seed_options():
    h = Hub()
    wide = h.encoder("gat", hidden_channels=48, num_layers=3, heads=3)
    assert wide.dim == 48 and wide.encode([nx.path_graph(4)]).tokens.shape == (1, 4, 48)
    assert len(wide.gnn.convs) == 3
    a, b = h.encoder("gin", seed=1), h.encoder("gin", seed=2)
    assert a.weights == "random-init(seed=1)"
    assert not torch.allclose(a.encode([nx.path_graph(4)]).tokens, b.encode([nx.path_graph(4)]).tokens)
    with pytest.raises(InvalidOptionsError, match="divisible by heads"):
        h.encoder("gps", hidden_channels=30, heads=4)
    assert h.encoder("gin", heads=3).dim == 32  # heads only matter to gat and gps
    with pytest.raises(InvalidOptionsError):
        h.encoder("gin", dropout=0.5)


@pytest.mark.parametrize("name", ["gin", "gps"])
def test_save_pretrained_round_trip(tmp_path, name):
    h = Hub()
    enc = h.encoder(name, seed=3, hidden_channels=16, num_layers=2, graph_token=True)
    out = enc.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = h.encoder(name, weights=str(out))
    assert loaded.weights == str(out) and loaded.dim == 16 and loaded.graph_token
    items = [nx.karate_club_graph(), featured(6)]
    assert torch.equal(enc.encode(items).tokens, loaded.encode(items).tokens)
    fresh = h.encoder(name, hidden_channels=16, num_layers=2, graph_token=True)  # seed 0: other weights
    assert not torch.allclose(fresh.encode(items).tokens, loaded.encode(items).tokens)
    capped = h.encoder(name, weights=str(out), max_tokens=4)  # runtime options may change
    assert capped.encode([nx.karate_club_graph()]).lengths.tolist() == [5]


def test_weights_errors(tmp_path):
    h = Hub()
    saved = h.encoder("sage").save_pretrained(tmp_path / "sage")
    with pytest.raises(InvalidOptionsError, match="load them with encoder 'sage'"):
        h.encoder("gin", weights=str(saved))
    with pytest.raises(InvalidOptionsError, match="hidden_channels=64 does not match"):
        h.encoder("sage", weights=str(saved), hidden_channels=64)
    with pytest.raises(WeightsNotFoundError, match="config.json and model.safetensors"):
        h.encoder("sage", weights=str(tmp_path / "missing"))
    (saved / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsNotFoundError, match="could not be loaded"):
        h.encoder("sage", weights=str(saved))


# -- SMILES ------------------------------------------------------------------------------------------------------
def test_smiles_without_rdkit_says_how_to_install(gin, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)  # import rdkit -> ImportError
    with pytest.raises(InvalidInputError, match=r"item 0 .*pip install 'modality-hub-graph\[chem\]'"):
        gin.prepare("CCO", 0)
    with pytest.raises(InvalidInputError, match=r"modality-hub-graph\[chem\]"):
        Hub().embed("CCO", modality="graph")


def test_smiles_with_rdkit(gin):
    pytest.importorskip("rdkit")
    te = Hub().embed(["c1ccccc1O", "CCO"], modality="graph")  # phenol: 7 heavy atoms; ethanol: 3
    assert te.lengths.tolist() == [7, 3]
    prepared = gin.prepare("c1ccccc1O", 0)
    assert prepared.x.shape == (7, 16) and prepared.x[:, 7:].abs().sum() > 0  # atom features filled
    with pytest.raises(InvalidInputError, match="not a valid SMILES"):
        gin.prepare("C1CC(", 0)


# -- GAT's scatter-free export (hub_graph._gat) ---------------------------------------------------------------
def test_incoming_layout_lists_every_node_s_incoming_edges():
    from hub_graph._gat import BUCKETS, incoming_layout

    # node 1 has a self-loop given (replaced by one), 0 -> 2 is repeated (kept twice), node 3 is isolated
    edge_index = torch.tensor([[0, 1, 0, 0, 2, 1], [1, 1, 2, 2, 0, 2]])
    lay = incoming_layout(edge_index, 4)
    tables = [lay[f"gat_bucket{b}"] for b in range(BUCKETS)]
    stacked = torch.cat([t.reshape(t.shape[0], -1)[:, :1] for t in tables])[:, 0]  # each row's node (column 0)
    assert torch.equal(stacked[lay["gat_order"]], torch.arange(4))  # gat_order finds every node's row
    want = {0: [0, 2], 1: [1, 0], 2: [2, 0, 0, 1], 3: [3]}  # self-loop first, then sources (repeats kept)
    for node, sources in want.items():
        pos, b = int(lay["gat_order"][node]), 0
        while pos >= tables[b].shape[0]:
            pos, b = pos - tables[b].shape[0], b + 1
        row = tables[b][pos]
        assert row[0] == node and sorted(row[row >= 0].tolist()) == sorted(sources)
    assert all(t.shape[0] >= 2 and t.shape[1] >= 2 for t in tables)  # never 0 or 1: sizes stay dynamic in the export


def test_structural_clustering_is_networkx_s():
    # the clustering column comes from nx.triangles (counted once): the same values as nx.clustering
    for seed, (n, p) in enumerate([(30, 0.3), (12, 1.0), (40, 0.05), (4, 0.0)]):
        g = nx.gnp_random_graph(n, p, seed=seed)
        edge_index = torch.tensor(list(g.edges()) + [(0, 0)]).t().long()  # a self-loop, dropped
        want = nx.clustering(g)
        got = structural_features(edge_index, n)[:, 3]
        assert torch.equal(got, torch.tensor([float(want[i]) for i in range(n)]).float())


def test_bucket_cuts_pad_the_least():
    from hub_graph._gat import bucket_cuts

    assert bucket_cuts(np.array([2, 2, 2, 9]), 2) == [3, 4]  # the hub alone: 3 * 2 + 9 padded slots
    assert bucket_cuts(np.array([3, 3, 3]), 4) == [3]  # one degree, one bucket
    degrees = np.sort(np.random.default_rng(0).integers(2, 40, 500))
    cuts = bucket_cuts(degrees, 4)
    assert len(cuts) <= 4 and cuts[-1] == degrees.size and cuts == sorted(cuts)
    cost = sum((e - s) * degrees[e - 1] for s, e in zip([0] + cuts[:-1], cuts))
    assert cost < 1.2 * degrees.sum() < degrees.size * degrees.max()  # well below one padding to the largest


def test_scatter_free_gat_equals_pyg_and_only_gat_collates_the_layout():
    from hub_graph._gat import LAYOUT_KEYS, gat_forward

    h = Hub()
    enc = h.encoder("gat", hidden_channels=64, heads=4, num_layers=3)
    hub_node = Data(x=torch.randn(40, 16), edge_index=torch.tensor([[i for i in range(1, 40)], [0] * 39]), num_nodes=40)
    items = h.registry.modality("graph").examples(6, 5) + [featured(1), Data(x=torch.randn(3, 16), num_nodes=3), hub_node]
    tensors = enc.preprocess(items)
    with torch.inference_mode():
        ref = enc.gnn(tensors["x"], tensors["edge_index"])  # PyG's GATv2Conv: what eager runs
        got = gat_forward(enc.gnn, tensors["x"], tensors["gat_order"], [tensors[k] for k in LAYOUT_KEYS[1:]])
        again = gat_forward(enc.gnn, tensors["x"], tensors["gat_order"], [tensors[k] for k in LAYOUT_KEYS[1:]])
    assert ref.abs().max() > 0.1 and float((got - ref).abs().max()) <= 1e-5
    assert torch.equal(got, again)  # deterministic
    assert "gat_order" not in h.encoder("gin").preprocess(items[:2])  # other encoders' inputs are unchanged


@pytest.mark.slow
def test_gat_export_has_no_scatter_reductions(tmp_path):
    import warnings

    onnx = pytest.importorskip("onnx")
    from hub.onnx import export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export("graph", tmp_path / "gat", encoder="gat", options={"num_layers": 3}, hub=Hub())
    assert manifest.parity.passed and max(c.max_abs_diff for c in manifest.parity.cases) <= 1e-4
    nodes = onnx.load(str(tmp_path / "gat" / "model.onnx")).graph.node
    ops = {n.op_type for n in nodes}
    assert "ScatterElements" not in ops and "ReduceSum" in ops  # neighbour sums: padded buckets, not scatter-add
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in onnx.load(str(tmp_path / "gat" / "model.onnx")).graph.input}
    assert all(isinstance(d, str) for k, v in shapes.items() if k.startswith("gat_bucket") for d in v)  # dynamic
    for n in nodes:  # the one ScatterND left places node rows in the dense token layout, without reduction
        reduction = [a.s.decode() for a in n.attribute if a.name == "reduction"]
        assert n.op_type != "ScatterND" or reduction in ([], ["none"])
