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
