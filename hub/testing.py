"""Test helpers for plugin authors: a conformance suite and an in-process plugin fixture.

Run the conformance suite on your encoders from your plugin's tests::

    import pytest
    from hub.testing import EncoderConformance

    class TestMyEncoders(EncoderConformance):
        @pytest.fixture(params=["my-encoder"])
        def encoder(self, request):
            return Hub().encoder(request.param)

        @pytest.fixture
        def items(self):            # >= 3 valid items, ideally of different sizes
            return [...]

        @pytest.fixture
        def bad_items(self):        # items the encoder must refuse with InvalidInputError
            return [...]

Or call :func:`check_encoder` directly.  :func:`registered_plugin` registers a
plugin object in-process for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from ._hub import Hub
from ._registry import Registry, default_registry
from .encoder import Encoder, describe_item
from .errors import InvalidInputError
from .specs import PluginInfo
from .tokens import TokenEmbeddings

__all__ = ["EncoderConformance", "check_encoder", "registered_plugin", "CHECKS"]


def _encode(encoder: Encoder, items: Sequence[Any]) -> TokenEmbeddings:
    return encoder.encode(list(items))


def check_output(encoder: Encoder, items: Sequence[Any], **_: Any) -> None:
    """Shapes, dtypes, mask and metadata of a batch."""
    te = _encode(encoder, items)
    assert isinstance(te, TokenEmbeddings), f"forward must return TokenEmbeddings, got {type(te).__name__}"
    assert te.tokens.dtype == torch.float32, f"tokens must be float32, got {te.tokens.dtype}"
    assert te.mask.dtype == torch.bool, f"mask must be bool, got {te.mask.dtype}"
    assert te.tokens.shape[0] == len(items), f"batch of {len(items)} gave {te.tokens.shape[0]} rows"
    assert te.tokens.shape[2] == encoder.dim, f"dim {te.tokens.shape[2]} != encoder.dim {encoder.dim}"
    assert te.modality == encoder.modality, f"modality {te.modality!r} != {encoder.modality!r}"
    assert te.space == encoder.space, f"space {te.space!r} != encoder.space {encoder.space!r}"
    assert bool(te.mask.any(dim=1).all()), "every item must have at least one real token"
    assert bool(torch.isfinite(te.tokens[te.mask]).all()), "real tokens must be finite"
    pooled = te.pooled()
    assert pooled.shape == (len(items), encoder.dim)


def check_num_tokens(encoder: Encoder, items: Sequence[Any], **_: Any) -> None:
    """``num_tokens`` (known before forward) equals the real tokens forward yields."""
    te = _encode(encoder, items)
    expected = [encoder.count_tokens(x) for x in items]
    assert te.lengths.tolist() == expected, f"num_tokens said {expected}, forward gave {te.lengths.tolist()}"


def check_deterministic(encoder: Encoder, items: Sequence[Any], atol: float = 1e-6, **_: Any) -> None:
    """The same items give the same tokens twice."""
    a, b = _encode(encoder, items), _encode(encoder, items)
    assert torch.equal(a.mask, b.mask)
    diff = (a.tokens - b.tokens)[a.mask].abs().max().item()
    assert diff <= atol, f"two runs differ by {diff}"


def check_batch_equals_singles(encoder: Encoder, items: Sequence[Any], atol: float = 1e-4, **_: Any) -> None:
    """A batch of N gives each item's tokens as N single calls do (padding changes nothing)."""
    batch = _encode(encoder, items)
    for i, item in enumerate(items):
        single = _encode(encoder, [item])
        assert batch[i].shape == single[0].shape, f"item {i}: batch shape {tuple(batch[i].shape)} vs single {tuple(single[0].shape)}"
        diff = (batch[i] - single[0]).abs().max().item()
        assert diff <= atol, f"item {i}: batched tokens differ from single by {diff} (> {atol})"


def check_bad_items(encoder: Encoder, items: Sequence[Any], bad_items: Sequence[Any] = (), **_: Any) -> None:
    """Each bad item raises InvalidInputError that names it; skipping keeps the good ones."""
    for bad in bad_items:
        try:
            encoder.prepare(bad, 7)
        except InvalidInputError as exc:
            assert "item 7" in str(exc), f"error for {describe_item(bad)} does not name the item: {exc}"
        else:
            raise AssertionError(f"{encoder.name} accepted bad item {describe_item(bad)}")
    if bad_items:
        hub = _HubOver(encoder)
        mixed = [items[0], bad_items[0], items[-1]]
        te = hub.embed(mixed, modality=encoder.modality, on_error="skip")
        assert te.indices == [0, 2], f"skip kept rows {te.indices}, expected [0, 2]"
        assert [e.index for e in te.errors] == [1]


class _HubOver(Hub):
    """A Hub whose encoder() returns one given instance (so conformance checks test *that* object)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self._one = encoder

    def encoder(self, name=None, *, modality=None, **options):  # noqa: D401
        return self._one


CHECKS = (check_output, check_num_tokens, check_deterministic, check_batch_equals_singles, check_bad_items)


def check_encoder(encoder: Encoder, items: Sequence[Any], bad_items: Sequence[Any] = (), *, atol: float = 1e-4) -> None:
    """Run every conformance check; raises AssertionError naming the first that fails."""
    if len(items) < 2:
        raise ValueError("check_encoder needs at least 2 valid items")
    encoder.eval()
    for check in CHECKS:
        try:
            check(encoder, items, bad_items=bad_items, atol=atol)
        except AssertionError as exc:
            raise AssertionError(f"{encoder.name}: {check.__name__}: {exc}") from exc


class EncoderConformance:
    """Subclass in a plugin's tests; provide ``encoder``, ``items`` and ``bad_items`` fixtures."""

    atol = 1e-4

    def test_output(self, encoder, items):
        check_output(encoder, items)

    def test_num_tokens(self, encoder, items):
        check_num_tokens(encoder, items)

    def test_deterministic(self, encoder, items):
        check_deterministic(encoder, items)

    def test_batch_equals_singles(self, encoder, items):
        check_batch_equals_singles(encoder, items, atol=self.atol)

    def test_bad_items(self, encoder, items, bad_items):
        check_bad_items(encoder, items, bad_items)


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin", registry: Registry | None = None) -> Iterator[PluginInfo]:
    """Register ``plugin`` in-process for a ``with`` block; always unregistered after."""
    reg = registry or default_registry()
    info = reg.register_plugin(plugin, name=name)
    try:
        yield info
    finally:
        reg.unregister_plugin(name)
