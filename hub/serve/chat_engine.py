"""The chat model's worker: one thread owns the :class:`~hub.lm.MultimodalLM`; requests queue and run one at a time.

**Concurrency.** Every generation and every plug / unplug runs on one dedicated thread
(``mhub-chat``), in arrival order, so nothing touches the model concurrently, seeds are exact
(``torch.manual_seed`` right before a request's generation, with nothing else sampling in between)
and a plug never lands in the middle of a generation.  Requests are *not* batched: a streamed
answer leaves as its tokens are made, and one request's sampling never depends on another's.
At most ``ChatConfig.max_queue`` requests wait; more get 429 with ``Retry-After``.

**Streaming.** With a backbone that has ``generate_stream`` (the transformers adapter's
``HFBackbone``), a hook sees every new token as it is chosen (a transformers ``StoppingCriteria``
passed to ``model.generate``: the tokens are ``generate``'s, token for token).  The hook decodes
the ids so far, cuts at a stop string, hands the text that can no longer change to the request
(holding back a possible start of a stop string, an incomplete UTF-8 character, and the space a
tokenizer's clean-up may still remove), and stops generation when a stop string appeared or the
client went away.  Other backbones run ``generate`` whole and send the answer as one chunk.

**Cancelling.** A request whose client disconnects is cancelled: dropped before it starts, or
stopped at its next token, which frees the worker for the next request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import ContextLengthError, HubError, ModalityNotPluggedError, PromptError
from .chat_messages import Turn, check_plugged, render
from .chat_schemas import ChatConfig
from .errors import ApiError

__all__ = ["ChatEngine", "ChatJob", "ChatResult", "GenOptions"]

log = logging.getLogger("hub.serve.chat")


@dataclass
class GenOptions:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)

    def backbone_kwargs(self) -> dict[str, Any]:
        """transformers generation options: OpenAI's semantics (temperature 0 is greedy; no top-k unless asked)."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": int(self.top_k)}


@dataclass
class ChatResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    by_modality: dict[str, int]
    completion_tokens: int
    sent: str = ""  # what the streaming hook already handed out


class ChatJob:
    """One request: its turns and options, the events it emits, and its cancel flag."""

    def __init__(self, turns: list[Turn], options: GenOptions, emit: Callable[[str, Any], None] | None = None,
                 stream: bool = False) -> None:
        self.turns, self.options, self.emit, self.stream = turns, options, emit, stream
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.future: Future | None = None

    def cancel(self) -> None:
        self.cancelled.set()


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held(text: str, stops: list[str], cleanup: bool) -> str:
    """The prefix of ``text`` that later tokens cannot change (see the module docstring)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":  # an incomplete multi-byte character
        end -= 1
    for s in stops:  # a suffix that could grow into a stop string
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[end - k:end] == s[:k]:
                end -= k
                break
    if cleanup:  # clean_up_tokenization_spaces removes a space before punctuation that may come next
        cut = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end))
        if cut >= 0:
            end = cut
    return text[:end]


class ChatEngine:
    """The model, its worker thread, the waiting count and the snapshot of what is plugged."""

    def __init__(self, lm: Any, name: str, config: ChatConfig | None = None) -> None:
        self.lm, self.name = lm, name
        self.cfg = config or ChatConfig()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = False
        self.metrics: Any = None  # set by hub.serve.chat.ChatService.install
        backbone = lm.backbone
        self.tokenizer = getattr(backbone, "tokenizer", None)
        self.cleanup = bool(getattr(self.tokenizer, "clean_up_tokenization_spaces", False))
        eos = getattr(backbone, "eos_token_ids", None) or ([backbone.eos_token_id] if backbone.eos_token_id is not None
                                                           else [])
        self.eos_ids = {int(i) for i in eos}
        prefix = list(backbone.prefix_ids())
        bos = getattr(self.tokenizer, "bos_token", None)
        self.prefix_text = bos if prefix and bos and self.tokenizer.convert_tokens_to_ids(bos) in prefix else None
        self.plugged: dict[str, dict[str, Any]] = {}
        self.refresh()

    # -- worker ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mhub-chat")

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def refresh(self) -> None:
        """Snapshot ``lm.plugged`` (read by /v1/models and the early checks; rebuilt after every plug)."""
        self.plugged = dict(self.lm.plugged)
        names = set(self.lm.registry.list_modalities())
        #: every string the composer reads as a placeholder
        self.marks = {info["placeholder"] for info in self.plugged.values()} | {f"<{m}>" for m in names}

    def submit(self, job: ChatJob) -> Future:
        """Queue ``job`` (429 when ``max_queue`` requests already wait)."""
        if self._pool is None:
            raise ApiError(503, "the chat worker is not running", reason="internal")
        with self._lock:
            if self.waiting >= self.cfg.max_queue:
                raise ApiError(429, f"{self.waiting} chat requests are already waiting for model {self.name!r} "
                               f"(the limit is {self.cfg.max_queue}); retry shortly", reason="queue_full",
                               code="queue_full", headers={"Retry-After": "1"})
            self.waiting += 1
        self._gauges()
        job.future = self._pool.submit(self._run, job)
        return job.future

    def withdraw(self, job: ChatJob) -> None:
        """Cancel ``job``: dropped if it has not started, stopped at its next token if it has."""
        job.cancel()
        if job.future is not None and job.future.cancel():
            with self._lock:
                self.waiting -= 1
            job.finished.set()
            self._count("cancelled", None)
            self._gauges()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model's thread, after the requests queued before it (plug / unplug)."""
        if self._pool is None:
            raise ApiError(503, "the chat worker is not running", reason="internal")
        return await asyncio.wrap_future(self._pool.submit(fn))

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue.set(self.waiting)
            self.metrics.running.set(1 if self.running else 0)

    def _count(self, outcome: str, result: ChatResult | None) -> None:
        if self.metrics is None:
            return
        self.metrics.requests.labels(outcome).inc()
        if result is not None:
            self.metrics.completion_tokens.labels(outcome).inc(result.completion_tokens)
            for m, n in result.by_modality.items():
                self.metrics.prompt_tokens.labels(m).inc(n)

    # -- one request, on the worker thread --------------------------------------------------------
    def _run(self, job: ChatJob) -> None:
        with self._lock:
            self.waiting -= 1
        self.running = True
        self._gauges()
        emit = job.emit or (lambda kind, payload: None)
        outcome, result = "error", None
        try:
            if job.cancelled.is_set():
                outcome = "cancelled"
                return
            result = self._generate(job, emit)
            outcome = "cancelled" if job.cancelled.is_set() else "ok"
            emit("done", result)
        except ApiError as exc:
            outcome = "rejected"
            emit("error", exc)
        except Exception as exc:  # noqa: BLE001 - one request's failure never stops the worker
            log.exception("chat request failed")
            emit("error", ApiError(500, f"internal error: {type(exc).__name__}: {exc}", reason="internal"))
        finally:
            self.running = False
            job.finished.set()
            self._count(outcome, result)
            self._gauges()

    def _generate(self, job: ChatJob, emit: Callable[[str, Any], None]) -> ChatResult:
        lm, opts = self.lm, job.options
        plugged = self.plugged
        check_plugged(job.turns, plugged, self.name)  # plugged may have changed while the request waited
        placeholders = {m: info["placeholder"] for m, info in plugged.items()}
        template, by_modality = render(job.turns, placeholders, self.marks, self.tokenizer, self.prefix_text)
        items = {}
        for m, segs in by_modality.items():  # prepare each item once first, so an error names its part
            encoder = lm.modalities[m]["encoder"]
            for k, seg in enumerate(segs):
                try:
                    encoder.prepare(seg.item, k)
                except HubError as exc:
                    raise ApiError(400, f"{seg.param}: {exc}", param=seg.param, reason="invalid_input",
                                   code=type(exc).__name__) from None
                except Exception as exc:  # noqa: BLE001 - a plugin bug still names the part
                    raise ApiError(400, f"{seg.param}: the {m} encoder could not read it: {type(exc).__name__}: {exc}",
                                   param=seg.param, reason="invalid_input") from None
            items[m] = [seg.item for seg in segs]
        with torch.inference_mode():
            try:
                comp = lm.compose([template], **items)
            except ContextLengthError as exc:
                raise ApiError(400, f"messages: {exc}", param="messages", reason="invalid_input",
                               code="context_length_exceeded") from None
            except ModalityNotPluggedError as exc:
                raise ApiError(400, f"messages: {exc}", param="messages", reason="invalid_input",
                               code="modality_not_plugged") from None
            except (PromptError, HubError) as exc:
                raise ApiError(400, f"messages: {exc}", param="messages", reason="invalid_input",
                               code=type(exc).__name__) from None
            length = int(comp.lengths[0])
            counts: dict[str, int] = {}
            for modality, start, end in comp.spans[0]:
                counts[modality] = counts.get(modality, 0) + (end - start)
            counts = {"text": length - sum(counts.values()), **counts}
            max_new = self._budget(length, counts, opts)
            emit("ready", {"prompt_tokens": length, "by_modality": counts})
            if opts.seed is not None:
                torch.manual_seed(opts.seed)
            state = {"sent": "", "stopped": False}

            def on_tokens(ids: list[int]) -> bool:
                if opts.stops or job.stream:
                    text = lm.backbone.decode(ids)
                    cut = _find_stop(text, opts.stops)
                    if cut is not None:
                        text, state["stopped"] = text[:cut], True
                    if job.stream:
                        safe = text if state["stopped"] else _held(text, opts.stops, self.cleanup)
                        if len(safe) > len(state["sent"]) and safe.startswith(state["sent"]):
                            emit("delta", safe[len(state["sent"]):])
                            state["sent"] = safe
                return state["stopped"] or job.cancelled.is_set()

            backbone, kwargs = lm.backbone, opts.backbone_kwargs()
            if hasattr(backbone, "generate_stream"):
                ids = backbone.generate_stream(comp.inputs_embeds, comp.attention_mask, max_new, on_tokens, **kwargs)[0]
            else:  # no token hook: the whole answer at once
                ids = backbone.generate(comp.inputs_embeds, comp.attention_mask, max_new, **kwargs)[0]
        text = lm.backbone.decode(ids)
        cut = _find_stop(text, opts.stops)
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif ids and ids[-1] in self.eos_ids:
            reason = "stop"
        elif job.cancelled.is_set():
            reason = "cancelled"
        else:
            reason = "length"
        return ChatResult(text, reason, length, counts, len(ids), state["sent"])

    def _budget(self, length: int, counts: dict[str, int], opts: GenOptions) -> int:
        """New tokens this request may make; a 400 saying by how much when ``max_tokens`` does not fit."""
        window = int(self.lm.backbone.max_context)
        room = window - length
        detail = ", ".join(f"{m} {n}" for m, n in counts.items())
        if opts.max_tokens is not None and opts.max_tokens > room:
            over = length + opts.max_tokens - window
            raise ApiError(400, f"the prompt is {length} tokens ({detail}); with max_tokens {opts.max_tokens} that is "
                           f"{length + opts.max_tokens}, over model {self.name!r}'s context window of {window} by "
                           f"{over}. Ask for at most {max(room, 0)} new tokens or shorten the prompt",
                           param="max_tokens", reason="invalid_input", code="context_length_exceeded")
        if room < 1:
            raise ApiError(400, f"the prompt is {length} tokens ({detail}), which leaves no room for an answer in model "
                           f"{self.name!r}'s context window of {window}: over by {length + 1 - window}. Shorten the "
                           "prompt or send fewer or smaller items", param="messages", reason="invalid_input",
                           code="context_length_exceeded")
        return opts.max_tokens if opts.max_tokens is not None else min(self.cfg.default_max_tokens, room)
