"""CLAP's exported graph (issue 15, part 4): no cubic Resize, no no-op Pad, same tokens as the tower's own path.

``ClapAudioEncoder`` applies reshape_mel2img's bicubic time stretch as a fixed matrix (torch's
interpolate of the identity) before the tower, so the export holds a MatMul instead of ONNX
Runtime's single-threaded cubic ``Resize``; ``hub.onnx.optimize.fuse`` drops ``Pad`` nodes whose pads
are constant zeros.  Both must leave the outputs as they were.  ``ClapAudioProcessor`` computes the
extractor's log-mel with torchaudio's STFT in float64: the same values as ``ClapFeatureExtractor``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from hub import Hub  # noqa: E402


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub()


def test_clap_stretch_matches_the_towers_interpolate(hub: Hub) -> None:
    enc = hub.encoder("tiny-clap")
    proc = enc.item_processor
    rng = np.random.default_rng(0)
    items = [(rng.standard_normal(n).astype(np.float32), proc.sampling_rate) for n in (4000, 32000, 50000)]
    tensors = enc.collate([enc.prepare(x, i) for i, x in enumerate(items)])
    x = tensors["input_features"]  # (windows, 1, frames, mels): fewer frames than the tower's width
    width = enc.audio.audio_encoder.spec_size * enc.audio.audio_encoder.freq_ratio
    assert x.shape[2] < width and enc._stretch.shape == (width, x.shape[2])
    with torch.inference_mode():
        # the tower alone: its own bicubic interpolate after the BatchNorm
        grid = enc.audio(input_features=x, is_longer=torch.zeros(x.shape[0], 1, dtype=torch.bool)).last_hidden_state
        own = grid.flatten(2).transpose(1, 2).reshape(-1, enc.dim)  # (windows * frames, dim)
        stretched = torch.nn.functional.interpolate(x, (width, x.shape[3]), mode="bicubic", align_corners=True)
        out = enc(**tensors)
    assert float((torch.matmul(enc._stretch, x) - stretched).abs().max()) < 1e-4 * float(x.abs().max())
    assert float((out.tokens[out.mask] - own[tensors["gather"][tensors["token_mask"]]]).abs().max()) < 1e-5
    assert "_stretch" not in enc.state_dict()  # not a weight: not saved, not hashed


@pytest.mark.parametrize("htsat", [False, True])
def test_clap_log_mel_matches_the_feature_extractor(hub: Hub, htsat: bool) -> None:
    proc = hub.registry.create_processor("tiny-clap", htsat=htsat)
    fe, n = proc.feature_extractor, proc.window_samples
    rng = np.random.default_rng(1)
    t = np.arange(n) / fe.sampling_rate
    windows = [
        rng.standard_normal(n).astype(np.float32),  # a full window
        (0.5 * np.sin(2 * np.pi * 440 * t[: n // 3])).astype(np.float32),  # tiled 3 times
        np.zeros(n - 7, np.float32),  # silence: the -100 dB floor
        np.full(1, 0.1, np.float32),  # one sample
        (1e-4 * rng.standard_normal(n // 2 + 3)).astype(np.float32),  # quiet, tiled once and zero-padded
        np.concatenate([np.zeros(n // 2), 0.9 * np.sin(2 * np.pi * 3000 * t[: n // 2])]).astype(np.float32),  # 120 dB range
    ]
    feats, tokens = proc._prepare_windows(windows)
    proc.fast_log_mel = False
    ref, ref_tokens = proc._prepare_windows(windows)
    assert tokens == ref_tokens and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(feats, ref))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(feats, ref))
    assert diff < 1e-4, diff  # dB; float32 rounding of values up to 100 is 7.6e-6


def test_fuse_drops_zero_pads_only(tmp_path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from hub.onnx.optimize import fuse

    zero = helper.make_tensor("zero", TensorProto.INT64, [4], [0, 0, 0, 0])
    one = helper.make_tensor("one", TensorProto.INT64, [4], [0, 1, 0, 1])
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "zero"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Pad", ["b", "one"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], [zero, one])
    src = tmp_path / "pad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    fuse(src)
    pads = [n for n in onnx.load(str(src)).graph.node if n.op_type == "Pad"]
    assert len(pads) == 1 and pads[0].input[1] == "one"
    after = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_clap_export_has_no_resize_or_pad(hub: Hub, tmp_path) -> None:
    import onnx

    from hub.onnx import export

    manifest = export("audio", tmp_path / "clap", encoder="tiny-clap", registry=hub.registry, hub=hub)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "clap" / "model.onnx")).graph.node}
    assert manifest.parity.passed and manifest.optimized
    assert "Resize" not in ops and "Pad" not in ops, sorted(ops)
    assert manifest.fused_ops.get("Attention", 0) >= 1
