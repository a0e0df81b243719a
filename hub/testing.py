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

Or call :func:`check_encoder` directly.  Augmentations get the same:
:class:`AugmentationConformance` (fixtures ``augmentation``, ``items``, ``bad_items``) or
:func:`check_augmentation`.  :func:`registered_plugin` registers a plugin object in-process
for the duration of a ``with`` block.
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

__all__ = ["EncoderConformance", "check_encoder", "registered_plugin", "CHECKS", "AugmentationConformance",
           "check_augmentation", "AUGMENTATION_CHECKS", "same_item"]


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


# -- augmentations --------------------------------------------------------------------------------------
class _Nonsense:
    """A parameter value no pydantic field type accepts (str, number, tuple, Literal, bool)."""

    def __repr__(self) -> str:
        return "<nonsense>"


def same_item(a: Any, b: Any) -> bool:
    """Deep equality of two items: arrays and tensors by value (NaN equal to NaN), PIL images by pixels,
    graphs by nodes and edges with their data, meshes by vertices and faces, objects by their fields."""
    import numpy as np

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.is_floating_point() and torch.allclose(
                    a, b, rtol=0, atol=0, equal_nan=True))))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype == object:
            return all(same_item(x, y) for x, y in zip(a.ravel(), b.ravel()))
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if type(a) is not type(b):
        return False
    if all(hasattr(a, k) for k in ("tobytes", "mode", "size", "getbands")):  # a PIL image
        return a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()
    if all(hasattr(a, k) for k in ("adj", "nodes", "edges", "graph")):  # a networkx graph
        return (same_item(dict(a.graph), dict(b.graph)) and same_item(dict(a.nodes(data=True)), dict(b.nodes(data=True)))
                and same_item(list(a.edges(data=True)), list(b.edges(data=True))))
    if hasattr(a, "vertices") and hasattr(a, "faces"):  # a mesh (trimesh keeps caches in its fields)
        return same_item(np.asarray(a.vertices), np.asarray(b.vertices)) and same_item(np.asarray(a.faces),
                                                                                        np.asarray(b.faces))
    if callable(getattr(a, "to_dict", None)) and not isinstance(a, dict):  # torch_geometric Data, pandas
        return same_item(a.to_dict(), b.to_dict())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_item(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_item(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b  # NaN
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return same_item(vars(a), vars(b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an ambiguous == (an array-like): compare what it shows
        return repr(a) == repr(b)


def _aug_spec(augmentation: Any, hub: Hub) -> Any:
    from .specs import AugmentationSpec

    if isinstance(augmentation, AugmentationSpec):
        return augmentation
    modality, _, name = str(augmentation).partition("/")
    if not name:
        raise ValueError(f"an augmentation is an AugmentationSpec or a 'modality/name' key; got {augmentation!r}")
    return hub.registry.augmentation(modality, name)


def _apply(spec: Any, item: Any, seed: int | None = None, rng: Any = None, **params: Any) -> Any:
    """What ``Hub.augment`` does for one augmentation: validate ``params``, then ``fn(item, rng, **params)``."""
    import numpy as np

    from ._registry import validate_options

    rng = rng if rng is not None else np.random.default_rng(seed)
    return spec.fn(item, rng, **validate_options(spec.params, params, f"augmentation {spec.key!r}"))


def check_augmentation_params(spec: Any, items: Sequence[Any], **_: Any) -> None:
    """Defaults validate; an unknown param and a wrong-typed value of each field raise ``InvalidOptionsError``
    naming it, through the hub (``Hub.augment``) and from ``fn`` called directly (``hub.augment.parse_params``)."""
    import numpy as np

    from .errors import InvalidOptionsError

    item = items[0]
    if spec.params is not None:
        spec.params()  # the defaults validate
    try:
        _apply(spec, item, seed=0, bogus=1)
    except InvalidOptionsError as exc:
        assert "bogus" in str(exc), f"the error for an unknown param does not name it: {exc}"
    else:
        raise AssertionError("an unknown param (bogus=1) was accepted; base the params model on hub.augment.AugmentParams")
    fields = {} if spec.params is None else spec.params.model_fields
    for field, info in fields.items():
        if info.annotation is Any:
            continue
        for how, call in (("Hub.augment", lambda: _apply(spec, item, seed=0, **{field: _Nonsense()})),
                          ("fn called directly", lambda: spec.fn(item, np.random.default_rng(0), **{field: _Nonsense()}))):
            try:
                call()
            except InvalidOptionsError as exc:
                assert field in str(exc), f"{how}: the error for a bad {field!r} does not name it: {exc}"
            else:
                raise AssertionError(f"{how}: {field}=<nonsense> was accepted; validate params in fn with "
                                     "hub.augment.parse_params(YourParams, params, what)")


def check_input_unchanged(spec: Any, items: Sequence[Any], same: Any = None, **_: Any) -> None:
    """``fn`` never modifies its input: each item deep-equals a copy taken before (``same_item``)."""
    import copy

    same = same or same_item
    for i, item in enumerate(items):
        before = copy.deepcopy(item)
        _apply(spec, item, seed=3)
        assert same(item, before), f"item {i} ({describe_item(item)}) was modified in place; copy before changing it"


def _embedders(spec: Any, hub: Hub, encoder: str | None) -> list[str]:
    if encoder is not None:
        return [encoder]
    mod = hub.registry.modality(spec.modality)
    names = [mod.demo_encoder] if mod.demo_encoder else []
    names += hub.registry.list_encoders(modality=spec.modality, pretrained=False) + [mod.default_encoder]
    return list(dict.fromkeys(names))


def check_output_valid(spec: Any, items: Sequence[Any], hub: Hub | None = None, encoder: str | None = None,
                       **_: Any) -> None:
    """The output is a valid item of the modality: ``Hub.detect`` claims it (when the modality detects
    in-memory items) and an encoder of the modality (``encoder``, the demo encoder, an untrained preset,
    or the default; the first that builds offline) embeds it, one row per item with finite tokens."""
    from .errors import HubError, WeightsNotFoundError

    hub = hub or Hub()
    outs = [_apply(spec, item, seed=0) for item in items]
    mod = hub.registry.modality(spec.modality)
    checked = False
    if mod.detect is not None:
        for i, out in enumerate(outs):
            try:
                found = hub.detect(out)
            except HubError as exc:
                raise AssertionError(f"the output for item {i} ({describe_item(out)}) is not a {spec.modality} "
                                     f"item: {exc}") from None
            assert found == spec.modality, f"the output for item {i} is detected as {found!r}, not {spec.modality!r}"
        checked = True
    for name in _embedders(spec, hub, encoder):
        try:
            hub.encoder(name, modality=spec.modality)
        except WeightsNotFoundError:
            continue
        try:
            te = hub.embed(outs, modality=spec.modality, encoder=name)
        except HubError as exc:
            raise AssertionError(f"encoder {name!r} refused an output: {exc}") from None
        assert te.tokens.shape[0] == len(outs), f"{name} embedded {te.tokens.shape[0]} of {len(outs)} outputs"
        assert bool(torch.isfinite(te.tokens[te.mask]).all()), f"{name} gave non-finite tokens for the outputs"
        checked = True
        break
    assert checked, (f"nothing could check the outputs: modality {spec.modality!r} has no detect() and none of "
                     f"{_embedders(spec, hub, encoder)} builds offline; pass encoder=")


def check_augmentation_seeded(spec: Any, items: Sequence[Any], same: Any = None, seeds: Sequence[int] = (0, 1, 2, 3),
                              expect_random: bool = True, **_: Any) -> None:
    """The same seed gives the same output (and ``seed=s`` equals ``rng=default_rng(s)``); with
    ``expect_random`` other seeds change the output of at least one item (an item may leave no
    room, e.g. dropping columns of a one-column row)."""
    import numpy as np

    same = same or same_item
    varied = False
    for i, item in enumerate(items):
        first = _apply(spec, item, seed=seeds[0])
        assert same(first, _apply(spec, item, seed=seeds[0])), f"item {i}: seed {seeds[0]} twice gave two outputs"
        assert same(first, _apply(spec, item, rng=np.random.default_rng(seeds[0]))), (
            f"item {i}: rng=default_rng({seeds[0]}) differs from seed={seeds[0]}; draw randomness only from rng")
        varied = varied or not all(same(first, _apply(spec, item, seed=s)) for s in seeds[1:])
    if expect_random and len(seeds) > 1:
        assert varied, f"seeds {list(seeds)} gave the same output for every item; does fn use rng?"


def check_augmentation_bad_items(spec: Any, items: Sequence[Any], bad_items: Sequence[Any] = (), **_: Any) -> None:
    """Each bad item raises ``InvalidInputError``."""
    for bad in bad_items:
        try:
            _apply(spec, bad, seed=0)
        except InvalidInputError:
            continue
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"bad item {describe_item(bad)} raised {type(exc).__name__} ({exc}), not "
                                 "InvalidInputError") from None
        raise AssertionError(f"bad item {describe_item(bad)} was accepted")


AUGMENTATION_CHECKS = (check_augmentation_params, check_input_unchanged, check_output_valid,
                       check_augmentation_seeded, check_augmentation_bad_items)


def check_augmentation(augmentation: Any, items: Sequence[Any], bad_items: Sequence[Any] = (), *,
                       hub: Hub | None = None, encoder: str | None = None, same: Any = None,
                       expect_random: bool = True) -> None:
    """Run every augmentation conformance check on ``augmentation`` (an ``AugmentationSpec`` or a
    ``"modality/name"`` key) with valid ``items`` (ideally of several kinds and sizes); raises
    ``AssertionError`` naming the first check that fails.  ``same(a, b)`` overrides :func:`same_item`."""
    hub = hub or Hub()
    spec = _aug_spec(augmentation, hub)
    if not items:
        raise ValueError("check_augmentation needs at least 1 valid item")
    for check in AUGMENTATION_CHECKS:
        try:
            check(spec, items, bad_items=bad_items, hub=hub, encoder=encoder, same=same, expect_random=expect_random)
        except AssertionError as exc:
            raise AssertionError(f"{spec.key}: {check.__name__}: {exc}") from exc


class AugmentationConformance:
    """Subclass in a plugin's tests; provide ``augmentation`` (a spec or ``"modality/name"``), ``items`` and
    ``bad_items`` fixtures.  Class attributes: ``registry`` (default: the process-wide one), ``encoder``
    (which encoder embeds the outputs), ``expect_random`` (False for a deterministic transform)."""

    registry: Any = None
    encoder: str | None = None
    expect_random = True

    def _spec(self, augmentation: Any) -> tuple[Any, Hub]:
        hub = Hub(self.registry)
        return _aug_spec(augmentation, hub), hub

    def test_params_are_validated(self, augmentation, items):
        spec, _ = self._spec(augmentation)
        check_augmentation_params(spec, items)

    def test_input_is_not_modified(self, augmentation, items):
        spec, _ = self._spec(augmentation)
        check_input_unchanged(spec, items)

    def test_output_is_a_valid_item(self, augmentation, items):
        spec, hub = self._spec(augmentation)
        check_output_valid(spec, items, hub=hub, encoder=self.encoder)

    def test_seeded(self, augmentation, items):
        spec, _ = self._spec(augmentation)
        check_augmentation_seeded(spec, items, expect_random=self.expect_random)

    def test_bad_items(self, augmentation, items, bad_items):
        spec, _ = self._spec(augmentation)
        check_augmentation_bad_items(spec, items, bad_items)


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin", registry: Registry | None = None) -> Iterator[PluginInfo]:
    """Register ``plugin`` in-process for a ``with`` block; always unregistered after."""
    reg = registry or default_registry()
    info = reg.register_plugin(plugin, name=name)
    try:
        yield info
    finally:
        reg.unregister_plugin(name)
