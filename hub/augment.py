"""Helpers for plugins that register augmentations (``register_augmentations``).

``AugmentParams`` is the base of an augmentation's parameter model,
``value_range(ge=..., le=...)`` the type of a ``(low, high)`` parameter, and
``parse_params`` validates keyword parameters into the model, raising
:class:`hub.InvalidOptionsError` that lists what is accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Sequence, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInputError, InvalidOptionsError

if TYPE_CHECKING:  # pragma: no cover
    from ._registry import Registry

__all__ = ["AugmentParams", "value_range", "parse_params", "augment"]

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
