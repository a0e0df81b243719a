"""`POST /v1/chat/completions` and the admin endpoints: request and response models, chat settings.

The request envelope is validated here; messages and their content parts are validated one by
one in :mod:`hub.serve.chat_messages`, so an error names ``messages[i].content[j]``.  Every
validation error of the chat endpoint is a 400 (OpenAI's ``invalid_request_error``).

OpenAI parameters this server does not implement are either **accepted and ignored**
(:data:`IGNORED`: they change nothing about the answer) or **rejected unless neutral**
(:data:`NEUTRAL`: a value that would change the answer, such as a non-zero penalty, is a 400
rather than silently ignored).  Anything else is a 400 naming the supported parameters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatConfig", "ChatRequest", "StreamOptions", "ChatCompletion", "ChatCompletionChunk", "ChatUsage",
    "PlugRequest", "UnplugRequest", "PluggedResponse", "IGNORED", "NEUTRAL", "SUPPORTED", "MAX_STOPS",
]

#: OpenAI parameters accepted and ignored: they do not change the generated text
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "safety_identifier")
#: OpenAI parameters accepted only at their neutral value (shown); any other value is a 400
NEUTRAL: dict[str, str] = {
    "frequency_penalty": "0", "presence_penalty": "0", "logit_bias": "{} or null", "logprobs": "false or null",
    "top_logprobs": "0 or null", "response_format": "{'type': 'text'} or null", "tools": "[] or null",
    "tool_choice": "'none' or null", "functions": "[] or null", "function_call": "'none' or null",
    "modalities": "['text'] or null", "audio": "null", "prediction": "null", "reasoning_effort": "null",
    "web_search_options": "null",
}
#: parameters that do something here
SUPPORTED = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
             "stop", "n", "stream", "stream_options")
MAX_STOPS = 4


class ChatConfig(BaseModel):
    """Settings of the chat endpoint (``mhub serve --bundle``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_max_tokens: int = Field(256, ge=1, description="new tokens when a request gives no max_tokens "
                                    "(never more than the context window leaves)")
    max_queue: int = Field(64, ge=1, description="chat requests waiting for the model; above it requests get 429")
    allow_admin: bool = Field(False, description="open /v1/admin/* when no API key is set (trusted networks only)")
    disconnect_poll_s: float = Field(0.1, gt=0, description="how often a waiting or streaming request checks that "
                                     "its client is still connected")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="send a last chunk with usage and no choices")


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's fields (see :data:`SUPPORTED`, :data:`IGNORED`, :data:`NEUTRAL`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the served chat model id (GET /v1/models)")
    messages: list[Any] = Field(description="system / developer, user and assistant messages; string content or "
                                "content parts (text, image_url, input_audio, graph, 3d)")
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most (default: the server's, within the "
                                   "context window)")
    max_completion_tokens: int | None = Field(None, ge=1, description="the same as max_tokens (OpenAI's newer name)")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1 (sampling, as OpenAI); 0: greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (default 1: off)")
    top_k: int | None = Field(None, ge=0, description="extension: sample among the k likeliest tokens (0: off)")
    seed: int | None = Field(None, description="torch.manual_seed before sampling: same seed, same answer")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings; the answer is cut before the "
                                         "first one (finish_reason 'stop')")
    n: int | None = Field(None, description="must be 1 (one choice per request)")
    stream: bool | None = Field(False, description="server-sent events in OpenAI's chunk format, then data: [DONE]")
    stream_options: StreamOptions | None = None

    # accepted and ignored
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    # accepted at their neutral value only (checked in hub.serve.chat_messages.check_neutral)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


# -- responses (for the OpenAPI page; the server writes the same shapes as JSON) --------------------
class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_by_modality: dict[str, int] = Field(
        default_factory=dict, description="prompt tokens per modality, text included (extension)")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None


# -- admin ---------------------------------------------------------------------------------------
class PlugRequest(BaseModel):
    """``POST /v1/admin/plug``: what ``MultimodalLM.plug`` takes."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="the chat model id (default: the one served)")
    modality: str = Field(description="the modality to plug (image, audio, graph, 3d, ...)")
    encoder: str | None = Field(None, description="a registered encoder name, or a directory written by `mhub align` "
                                "(an aligned encoder) on the server; default: the modality's default encoder")
    projector: str = Field("mlp", description="a projector kind (linear, mlp, resampler, pool) or a saved projector "
                           "directory on the server")
    placeholder: str | None = Field(None, description="the prompt placeholder (default '<modality>')")
    encoder_options: dict[str, Any] | None = None
    projector_options: dict[str, Any] | None = None


class UnplugRequest(BaseModel):
    """``POST /v1/admin/unplug``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="the chat model id (default: the one served)")
    modality: str


class PluggedResponse(BaseModel):
    object: Literal["plugged"] = "plugged"
    model: str
    plugged: dict[str, dict[str, Any]]
