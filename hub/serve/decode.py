"""Request ``input`` → hub items, one per position, each tied to its ``param`` (``input[i]``).

Two steps, so the cheap one runs first and the costly one runs off the event loop:

1. :func:`split_input` (cheap, structural): the input forms — a string, a list of strings,
   infinity's request-level ``modality`` with data URIs, typed parts — become
   :class:`RawItem` s; token-id arrays are refused; item caps are checked; every part is
   validated on its own so an error names its position.
2. :func:`to_hub_item` (per item, in a worker thread): base64 and data URIs decoded, limits
   checked from headers before full decoding, and the result is an item the hub's plugins
   accept: ``str`` (text), ``bytes`` (image and audio files), graph dicts
   (``{"edge_index", "x"}`` or ``{"data", "format"}``), 3D arrays or ``{"data", "format"}``.

URLs are never fetched: only data URIs and base64 are read, so the server cannot be
made to request anything (no server-side request forgery).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from . import limits
from .config import ServeConfig
from .errors import ApiError
from .schemas import PART, PART_MODALITY, AudioPart, GraphPart, ImagePart, PointsPart, TextPart

__all__ = ["RawItem", "split_input", "to_hub_item", "LANGCHAIN_HINT"]

LANGCHAIN_HINT = (
    "token-id arrays are not accepted: this server tokenizes itself, and token ids of one tokenizer mean "
    "nothing to the encoders of other modalities. Send the text as strings. LangChain's OpenAIEmbeddings sends "
    "token ids unless it is built with check_embedding_ctx_length=False"
)
#: infinity's request-level modality -> (media type prefix of its data URIs, part type)
INFINITY_MODALITIES = {"image": ("image/", "image_url"), "audio": ("audio/", "input_audio")}
_DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass
class RawItem:
    """One input position: its modality, the validated part (or str), and its ``param``."""

    index: int
    modality: str
    part: Any
    param: str


def _is_token_ids(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _schema_error(param: str, exc: ValidationError) -> ApiError:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("function-after",))
    msg = err.get("msg", "invalid")
    return ApiError(422, f"{param}: invalid part{f' at {where}' if where else ''}: {msg}. Parts: "
                    "{'type': 'text', 'text'}, {'type': 'image_url', 'image_url': {'url': data URI}}, "
                    "{'type': 'input_audio', 'input_audio': {'data', 'format'}}, "
                    "{'type': 'graph', 'graph': {'edge_index', 'x'} or {'data', 'format'}}, "
                    "{'type': '3d', 'points'} or {'type': '3d', 'data', 'format'}",
                    param=param, reason="invalid_input", code="invalid_part")


def split_input(value: Any, modality: str | None, cfg: ServeConfig) -> list[RawItem]:
    """The request's ``input`` (and infinity's ``modality``) → raw items, validated and counted."""
    if isinstance(value, str):
        return [RawItem(0, "text", value, "input")]
    if not isinstance(value, list):
        raise ApiError(422, f"input must be a string, a list of strings or a list of typed parts; got "
                       f"{type(value).__name__}", param="input", reason="invalid_request")
    if not value:
        raise ApiError(400, "input is an empty list; send at least one item", param="input", reason="invalid_request")
    if _is_token_ids(value) or any(_is_token_ids(v) for v in value):
        raise ApiError(400, LANGCHAIN_HINT, param="input", reason="invalid_request", code="token_ids_not_supported")
    texts = sum(1 for v in value if isinstance(v, str) or (isinstance(v, dict) and v.get("type") == "text"))
    if modality in INFINITY_MODALITIES:
        texts = 0
    if texts > cfg.max_text_items:
        raise ApiError(413, f"input has {texts} text items; this server takes at most {cfg.max_text_items} per "
                       "request (mhub serve --max-text-items)", param="input", reason="too_many_items")
    if len(value) - texts > cfg.max_other_items:
        raise ApiError(413, f"input has {len(value) - texts} non-text items; this server takes at most "
                       f"{cfg.max_other_items} per request (mhub serve --max-other-items)", param="input",
                       reason="too_many_items")
    if modality is not None and modality != "text":
        if modality not in INFINITY_MODALITIES:
            raise ApiError(400, f"modality {modality!r} is not one of 'text', 'image', 'audio' (infinity's form: "
                           "input as a list of data URIs); for graphs and 3D send typed parts",
                           param="modality", reason="invalid_request")
        return [_infinity_item(i, v, modality) for i, v in enumerate(value)]
    out = []
    for i, v in enumerate(value):
        param = f"input[{i}]"
        if isinstance(v, str):
            out.append(RawItem(i, "text", v, param))
        elif isinstance(v, dict):
            try:
                part = PART.validate_python(v)
            except ValidationError as exc:
                raise _schema_error(param, exc) from None
            out.append(RawItem(i, PART_MODALITY[part.type], part, param))
        else:
            raise ApiError(422, f"{param}: expected a string or a typed part (object with 'type'), got "
                           f"{type(v).__name__}", param=param, reason="invalid_input")
    return out


def _infinity_item(i: int, v: Any, modality: str) -> RawItem:
    param = f"input[{i}]"
    if not isinstance(v, str):
        raise ApiError(422, f"{param}: with modality={modality!r}, input must be a list of data URIs; got "
                       f"{type(v).__name__}", param=param, reason="invalid_input")
    return RawItem(i, modality, v, param)


# -- step 2: decoding --------------------------------------------------------------------------------
def _b64(data: str, param: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"{param}: {what} is not valid base64 ({exc})", param=param,
                           reason="invalid_input") from None


def data_uri(url: str, param: str, media: str) -> bytes:
    """The bytes of a base64 ``data:`` URI whose media type starts with ``media`` (``image/``)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", url, re.I):
        raise ApiError(400, f"{param}: URLs are never fetched by this server (no server-side requests); send the "
                       f"file inline as a data URI (data:{media}...;base64,...)", param=param,
                       reason="invalid_input", code="url_not_allowed")
    m = _DATA_URI.match(url)
    if m is None or not m.group("b64"):
        raise ApiError(400, f"{param}: expected a base64 data URI (data:{media}...;base64,...), got "
                       f"{url[:40]!r}{'...' if len(url) > 40 else ''}", param=param, reason="invalid_input")
    kind = (m.group("type") or "").lower()
    if kind and not kind.startswith(media) and kind != "application/octet-stream":
        raise ApiError(400, f"{param}: data URI of type {kind!r}; this part takes {media}*", param=param,
                       reason="invalid_input")
    return _b64(url[m.end():], param, "the data URI")


def to_hub_item(raw: RawItem, cfg: ServeConfig) -> Any:
    """Decode one raw item (limits first) into an item the modality's plugin accepts."""
    p, param = raw.part, raw.param
    if isinstance(p, str):  # plain string: text, or an infinity data URI
        if raw.modality == "text":
            limits.check_text(p, param, cfg)
            return p
        media = INFINITY_MODALITIES[raw.modality][0]
        data = data_uri(p, param, media)
        (limits.check_image if raw.modality == "image" else limits.check_audio)(data, param, cfg)
        return data
    if isinstance(p, TextPart):
        limits.check_text(p.text, param, cfg)
        return p.text
    if isinstance(p, ImagePart):
        data = data_uri(p.image_url.url, param, "image/")
        limits.check_image(data, param, cfg)
        return data
    if isinstance(p, AudioPart):
        data = _b64(p.input_audio.data, param, "input_audio.data")
        limits.check_audio(data, param, cfg)
        return data
    if isinstance(p, GraphPart):
        g = p.graph
        if g.data is not None:
            limits.check_graph_text(g.data, g.format, param, cfg)
            return {"data": g.data, "format": g.format}
        limits.check_graph_lists(g.edge_index, g.x, g.num_nodes, param, cfg)
        item: dict[str, Any] = {"edge_index": g.edge_index}
        if g.x is not None:
            item["x"] = g.x
        if g.num_nodes is not None:
            item["num_nodes"] = g.num_nodes
        return item
    if isinstance(p, PointsPart):
        if p.data is not None:
            data = _b64(p.data, param, "data")
            limits.check_points_bytes(data, p.format, param, cfg)
            return {"data": data, "format": p.format}
        limits.check_points_count(len(p.points), param, cfg)
        try:
            return np.asarray(p.points, dtype=np.float64)
        except ValueError as exc:
            raise ApiError(400, f"{param}: points must be rows of equal length [x, y, z, ...] ({exc})",
                           param=param, reason="invalid_input") from None
    raise ApiError(500, f"{param}: unhandled part {type(p).__name__}", param=param, reason="internal")
