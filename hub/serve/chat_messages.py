"""Chat messages → one prompt template with modality placeholders, plus the items in order.

Three steps, cheapest first:

1. :func:`parse_messages` (structural, on the event loop): roles, string content or content
   parts (the typed parts of ``/v1/embeddings``: ``text``, ``image_url``, ``input_audio``,
   ``graph``, ``3d``), item caps; an error names ``messages[i].content[j]``.
2. :func:`decode_items` (in a worker thread): every item part decoded with
   :func:`hub.serve.decode.to_hub_item` (base64 / data URIs, limits read from headers).
3. :func:`render` (in the model's thread, against what is plugged *then*): every item part
   becomes its modality's placeholder where the part was, and the messages become one text.

**Prompt format.** When the backbone's tokenizer has a chat template, the messages go through
``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` with each message's content
as one string (its parts concatenated in order; an item part is its placeholder).  A leading BOS
the template writes is dropped, since the composer adds the backbone's own prefix.  Otherwise the
documented plain template :data:`PLAIN_TEMPLATE` is used: one ``"{role}: {content}\\n"`` line per
message (``developer`` is written as ``system``), then ``"assistant:"``.

Text may not contain a placeholder (``<image>``...): the composer would read it as an item.
Such text is a 400 naming the part, never silently altered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pydantic import ValidationError

from . import limits
from .config import ServeConfig
from .decode import RawItem, to_hub_item
from .errors import ApiError
from .schemas import PART, PART_MODALITY, TextPart

__all__ = ["Segment", "Turn", "parse_messages", "decode_items", "render", "check_plugged", "check_neutral",
           "PLAIN_TEMPLATE", "ROLES"]

#: the plain prompt format for backbones without a chat template
PLAIN_TEMPLATE = "{role}: {content}\n"
#: message roles accepted (``developer`` is OpenAI's newer name for ``system``)
ROLES = ("system", "developer", "user", "assistant")
_PART_HELP = ("parts: {'type': 'text', 'text'}, {'type': 'image_url', 'image_url': {'url': data URI}}, "
              "{'type': 'input_audio', 'input_audio': {'data', 'format'}}, {'type': 'graph', 'graph': {'edge_index', "
              "'x'} or {'data', 'format'}}, {'type': '3d', 'points'} or {'type': '3d', 'data', 'format'}")


@dataclass
class Segment:
    """One piece of a message: text, or an item of ``modality`` (decoded later into ``item``)."""

    modality: str  # "text" or the item's modality
    param: str
    text: str = ""
    raw: RawItem | None = None
    item: Any = None


@dataclass
class Turn:
    role: str
    segments: list[Segment] = field(default_factory=list)


def _bad(param: str, message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, reason="invalid_input" if "content" in param else
                    "invalid_request", code=code)


def check_neutral(req: Any) -> None:
    """400 for an OpenAI parameter set to a value this server would otherwise silently ignore."""
    from .chat_schemas import NEUTRAL

    def neutral(name: str, value: Any) -> bool:
        if value is None:
            return True
        if name in ("frequency_penalty", "presence_penalty"):
            return value == 0
        if name == "top_logprobs":
            return value == 0
        if name in ("logit_bias", "tools", "functions"):
            return not value
        if name == "logprobs":
            return value is False
        if name == "response_format":
            return value.get("type") == "text"
        if name in ("tool_choice", "function_call"):
            return value == "none"
        if name == "modalities":
            return list(value) == ["text"]
        return False

    for name, allowed in NEUTRAL.items():
        value = getattr(req, name)
        if not neutral(name, value):
            raise ApiError(400, f"{name}={value!r} is not supported by this server (it would change the answer, "
                           f"so it is refused rather than ignored); accepted: {allowed}", param=name,
                           reason="invalid_request", code="unsupported_parameter")
    if req.n is not None and req.n != 1:
        raise ApiError(400, f"n={req.n}: this server returns one choice per request; send n=1 (or omit it) and "
                       "repeat the request for more", param="n", reason="invalid_request", code="unsupported_parameter")


def parse_messages(messages: Sequence[Any], cfg: ServeConfig) -> list[Turn]:
    """Validate roles and content parts; item parts become :class:`RawItem` s (not decoded yet)."""
    if not messages:
        raise ApiError(400, "messages is empty; send at least one message", param="messages", reason="invalid_request")
    turns: list[Turn] = []
    items = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(where, f"a message is an object with 'role' and 'content', got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            extra = " (tool calls are not supported)" if role in ("tool", "function") else ""
            raise _bad(f"{where}.role", f"role {role!r} is not one of {', '.join(ROLES)}{extra}")
        unknown = sorted(set(msg) - {"role", "content", "name"})
        if unknown:
            hint = " (tool calls are not supported)" if {"tool_calls", "function_call"} & set(unknown) else ""
            raise _bad(where, f"unknown field(s) {', '.join(unknown)}; a message has role, content and "
                       f"optionally name{hint}")
        content = msg.get("content")
        turn = Turn(role)
        if isinstance(content, str):
            limits.check_text(content, f"{where}.content", cfg)
            turn.segments.append(Segment("text", f"{where}.content", text=content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                param = f"{where}.content[{j}]"
                if not isinstance(part, dict):
                    raise _bad(param, f"a content part is an object with 'type'; got {type(part).__name__}. "
                               + _PART_HELP, code="invalid_part")
                try:
                    typed = PART.validate_python(part)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    loc = ".".join(str(x) for x in err.get("loc", ()))
                    raise _bad(param, f"invalid part{f' at {loc}' if loc else ''}: {err.get('msg')}. {_PART_HELP}",
                               code="invalid_part") from None
                modality = PART_MODALITY[typed.type]
                if isinstance(typed, TextPart):
                    limits.check_text(typed.text, param, cfg)
                    turn.segments.append(Segment("text", param, text=typed.text))
                    continue
                if role != "user":
                    raise _bad(param, f"a {role} message takes text parts only; items ({modality}) go in user "
                               "messages", code="invalid_part")
                items += 1
                turn.segments.append(Segment(modality, param, raw=RawItem(items - 1, modality, typed, param)))
        else:
            what = "null" if content is None else type(content).__name__
            raise _bad(f"{where}.content", f"content must be a string or a list of content parts, got {what}")
        turns.append(turn)
    if items > cfg.max_other_items:
        raise ApiError(413, f"messages hold {items} items; this server takes at most {cfg.max_other_items} per "
                       "request (mhub serve --max-other-items)", param="messages", reason="too_many_items")
    return turns


def item_segments(turns: list[Turn]) -> list[Segment]:
    return [s for t in turns for s in t.segments if s.modality != "text"]


def check_plugged(turns: list[Turn], plugged: dict[str, dict[str, Any]], model: str) -> None:
    """400 for the first item part whose modality is not plugged, listing what is."""
    for seg in item_segments(turns):
        if seg.modality not in plugged:
            have = ", ".join(f"{m} ({info.get('placeholder')})" for m, info in plugged.items()) or "nothing (text only)"
            raise ApiError(400, f"{seg.param} is a {seg.modality} part, but {seg.modality} is not plugged into model "
                           f"{model!r}; plugged: {have}. An admin can plug it: POST /v1/admin/plug",
                           param=seg.param, reason="invalid_input", code="modality_not_plugged")


def decode_items(turns: list[Turn], cfg: ServeConfig) -> None:
    """Decode every item part in place (base64, data URIs, limits); runs in a worker thread."""
    for seg in item_segments(turns):
        seg.item = to_hub_item(seg.raw, cfg)


def render(turns: list[Turn], placeholders: dict[str, str], marks: set[str], tokenizer: Any,
           prefix_text: str | None) -> tuple[str, dict[str, list[Segment]]]:
    """The prompt template (placeholders where the item parts were) and the item segments by modality.

    ``marks``: every string the composer reads as a placeholder (text holding one is a 400);
    ``prefix_text``: the text of the backbone's prefix (BOS) to drop from a chat template's output.
    """
    items: dict[str, list[Segment]] = {}
    rendered = []
    for turn in turns:
        pieces = []
        for seg in turn.segments:
            if seg.modality == "text":
                hit = next((m for m in marks if m in seg.text), None)
                if hit is not None:
                    raise ApiError(400, f"{seg.param}: text contains {hit!r}, which this model reads as a modality "
                                   "placeholder; send items as typed content parts and remove the placeholder from "
                                   "the text", param=seg.param, reason="invalid_input", code="placeholder_in_text")
                pieces.append(seg.text)
            else:
                pieces.append(placeholders[seg.modality])
                items.setdefault(seg.modality, []).append(seg)
        role = "system" if turn.role == "developer" else turn.role
        rendered.append({"role": role, "content": "".join(pieces)})
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        text = tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        if prefix_text and text.startswith(prefix_text):
            text = text[len(prefix_text):]
        return text, items
    return "".join(PLAIN_TEMPLATE.format(**m) for m in rendered) + "assistant:", items


def plain_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """The plain template for ``(role, content)`` pairs (content with placeholders): for clients and tests."""
    return "".join(PLAIN_TEMPLATE.format(role="system" if r == "developer" else r, content=c)
                   for r, c in messages) + "assistant:"
