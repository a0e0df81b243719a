"""Helpers for plugins that register augmentations (``register_augmentations``).

``AugmentParams`` is the base of an augmentation's parameter model,
``value_range(ge=..., le=...)`` the type of a ``(low, high)`` parameter, and
``parse_params`` validates keyword parameters into the model, raising
:class:`hub.InvalidOptionsError` that lists what is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidOptionsError

__all__ = ["AugmentParams", "value_range", "parse_params"]

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
