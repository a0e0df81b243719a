"""Helpers for plugins that register augmentations (``register_augmentations``), and
:class:`TransformedProcessor`, which runs registered transforms before a processor.

``AugmentParams`` is the base of an augmentation's parameter model,
``value_range(ge=..., le=...)`` the type of a ``(low, high)`` parameter, and
``parse_params`` validates keyword parameters into the model, raising
:class:`hub.InvalidOptionsError` that lists what is accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Sequence, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .errors import BundleError, HubError, InvalidInputError, InvalidOptionsError
from .processor import Processor

if TYPE_CHECKING:  # pragma: no cover
    from ._registry import Registry

__all__ = ["AugmentParams", "value_range", "parse_params", "augment", "TransformedProcessor", "check_transforms"]

P = TypeVar("P", bound=BaseModel)


class AugmentParams(BaseModel):
    """Base of augmentation parameter models: unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"a range is (low, high) with low <= high; got {pair}")
    return pair


def value_range(**bounds: float) -> Any:
    """A ``(low, high)`` pair, each bounded by ``bounds`` (``ge``, ``gt``, ``le``, ``lt``), low <= high."""
    bound = Annotated[float, Field(**bounds)]
    return Annotated[tuple[bound, bound], AfterValidator(_ordered)]


def parse_params(model: type[P], params: dict[str, Any], what: str) -> P:
    """``model(**params)``, or :class:`InvalidOptionsError` naming ``what``, the problems and the accepted fields."""
    try:
        return model(**params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidOptionsError(
            f"invalid params for {what}: {problems}. Accepted: {', '.join(model.model_fields)}"
        ) from None


def augment(registry: "Registry", item: Any, name: str | Sequence[str], modality: str, *, seed: int | None = None,
            rng: Any = None, **params: Any) -> Any:
    """Apply one registered augmentation of ``modality`` (or several, in order) to ``item``; seeded.

    ``params`` go to a single augmentation and are validated by its pydantic model.
    """
    import numpy as np

    from ._registry import validate_options

    names = [name] if isinstance(name, str) else list(name)
    if len(names) > 1 and params:
        raise InvalidInputError("params apply to one augmentation; chain calls to give each its own")
    rng = rng if rng is not None else np.random.default_rng(seed)
    for n in names:
        spec = registry.augmentation(modality, n)
        item = spec.fn(item, rng, **validate_options(spec.params, params, f"augmentation {spec.key!r}"))
    return item


def check_transforms(transforms: Any, where: str) -> list[dict[str, Any]]:
    """``[{"name": ..., "params": {...}}, ...]`` as read from a file: registered augmentation names of the
    item's modality with their params (validated when applied); anything else is a ``BundleError``."""
    if not isinstance(transforms, list) or len(transforms) > 16:
        raise BundleError(f"{where}: transforms must be a list of at most 16 {{'name', 'params'}} objects")
    out = []
    for i, t in enumerate(transforms):
        if (not isinstance(t, dict) or set(t) - {"name", "params"} or not isinstance(t.get("name"), str)
                or not isinstance(t.get("params", {}), dict)):
            raise BundleError(f"{where}: transforms[{i}] must be {{'name': str, 'params': object}}; got {t!r:.200}")
        out.append({"name": t["name"], "params": dict(t.get("params", {}))})
    return out


class TransformedProcessor(Processor):
    """A processor that first runs deterministic, registered transforms on every item (seed 0), then the
    inner processor: the input normalisation an aligned encoder was trained with (``align.json``'s
    ``transforms``; an export records them in ``preprocess.transforms``).  Each transform is an augmentation
    registered for the modality (:func:`hub.augment.augment`), so a file can only choose installed code."""

    def __init__(self, inner: Processor, transforms: Sequence[dict[str, Any]], registry: Any) -> None:
        self.inner, self.transforms, self.registry = inner, [dict(t) for t in transforms], registry
        self.name, self.modality = inner.name, inner.modality
        self.accepts, self.reload_as = tuple(inner.accepts), inner.reload_as
        for t in self.transforms:  # every named transform must be installed: never embed without it
            try:
                registry.augmentation(self.modality, t["name"])
            except HubError as exc:
                raise BundleError(
                    f"{self.name}: the input transform {t['name']!r} ({self.modality}) is not registered; install "
                    f"the plugin that registers it (registered: {', '.join(registry.list_augmentations(self.modality)) or 'none'})"
                ) from exc

    def prepare(self, item: Any, index: int = 0) -> Any:
        for t in self.transforms:
            try:
                item = augment(self.registry, item, t["name"], self.modality, seed=0, **t["params"])
            except HubError as exc:
                raise self.invalid(index, item, f"input transform {t['name']!r} failed: {exc}") from exc
        return self.inner.prepare(item, index)

    def collate(self, prepared: Sequence[Any]) -> dict[str, Any]:
        return self.inner.collate(prepared)

    def num_tokens(self, prepared: Any) -> int:
        return self.inner.num_tokens(prepared)

    def length(self, prepared: Any) -> int:
        return self.inner.length(prepared)

    def save(self, directory: Any) -> dict[str, Any] | None:
        return self.inner.save(directory)
