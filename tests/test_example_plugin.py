"""The example plugin (examples/plugin) passes the conformance suite, and CONTRIBUTING.md shows it verbatim."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hub.testing import EncoderConformance

ROOT = Path(__file__).resolve().parents[1]


class TestSeriesConformance(EncoderConformance):
    @pytest.fixture(params=[{}, {"patch": 3, "dim": 8}])
    def encoder(self, request, hub):
        return hub.encoder("series-patch", **request.param)

    @pytest.fixture
    def items(self):
        return [np.sin(np.arange(10, dtype=np.float32)), np.ones(3, np.float64), torch.linspace(0, 1, 17)]

    @pytest.fixture
    def bad_items(self):
        return [np.array([], np.float32), np.array([1.0, np.nan]), np.zeros((2, 2)), "text"]


def test_series_tokens_are_patches(hub):
    te = hub.embed([np.arange(9, dtype=np.float32)], encoder="series-patch")
    assert te.lengths.tolist() == [3]  # ceil(9 / 4)


def test_contributing_shows_the_example_files_verbatim():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S))
    for rel in ("examples/plugin/pyproject.toml", "examples/plugin/hub_example/__init__.py"):
        assert rel in blocks, f"CONTRIBUTING.md lacks the block for {rel}"
        assert blocks[rel] == (ROOT / rel).read_text(encoding="utf-8"), f"CONTRIBUTING.md's copy of {rel} is stale"


def test_example_series_examples_are_seeded_and_varied(hub):
    mod = hub.registry.modality("series")
    a, b = mod.examples(8, 0), mod.examples(8, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, mod.examples(8, 1)))
    assert len({len(x) for x in a}) >= 4 and all(hub.detect(x) == "series" for x in a)


@pytest.mark.parametrize("options,pooled", [({}, False), ({"patch": 3, "dim": 8}, True)])
def test_example_plugin_exports_to_onnx(hub, tmp_path, options, pooled):
    """CONTRIBUTING's plugin exports as shipped: its collate key ``mask`` is also an output name."""
    from hub.onnx import OnnxEncoder, export

    m = export("series", tmp_path / "series", options=options, pooled=pooled, hub=hub)
    assert m.parity.passed
    assert [s.name for s in m.inputs] == ["patches", "input_mask"]  # renamed: 'mask' names an output
    oe = OnnxEncoder(tmp_path / "series", hub=hub)
    items = hub.registry.modality("series").examples(9, 42)
    ref = hub.encoder("series-patch", **options).encode(items)
    got = oe.encode(items)
    if pooled:
        torch.testing.assert_close(got.pooled(), ref.pooled(), rtol=0, atol=1e-4)
    else:
        assert torch.equal(got.mask, ref.mask)
        torch.testing.assert_close(got.tokens[ref.mask], ref.tokens[ref.mask], rtol=0, atol=1e-4)
