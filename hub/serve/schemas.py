"""Request and response models: OpenAI's embeddings shape, infinity's ``modality``, typed parts.

The request body is validated in two steps so that limits come before expensive work:
:class:`EmbeddingRequest` checks the envelope (``input`` stays raw), the server counts
items against the caps, then each part is validated on its own with :data:`PART` so an
error names ``input[i]``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "EmbeddingRequest", "EmbeddingResponse", "EmbeddingData", "Usage", "ModelCard", "ModelList", "ErrorBody",
    "TextPart", "ImagePart", "AudioPart", "GraphPart", "PointsPart", "PART", "GRAPH_FORMATS", "POINTS_FORMATS",
    "AUDIO_FORMATS",
]

GRAPH_FORMATS = ("graphml", "gml", "edgelist")
POINTS_FORMATS = ("ply", "obj", "off", "stl", "xyz", "npy")
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request ------------------------------------------------------------------------------------
class EmbeddingRequest(_Strict):
    """``POST /v1/embeddings``: OpenAI's fields, infinity's ``modality``, and two extensions."""

    model: str = Field(description="a served model id (GET /v1/models)")
    input: Any = Field(description="a string, a list of strings, or a list of typed parts")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: int | None = Field(None, ge=1, description="only for encoders with Matryoshka support")
    user: str | None = Field(None, description="accepted and ignored (OpenAI clients send it)")
    modality: str | None = Field(None, description="infinity's form: 'image' or 'audio' with input as data URIs")
    normalize: bool = Field(True, description="L2-normalize the pooled vectors (extension)")
    return_tokens: bool = Field(False, description="also return token-level embeddings, T x D base64 (extension)")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str = Field(description="a data URI (data:image/png;base64,...); URLs are never fetched")
    detail: str | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(_Strict):
    data: str = Field(description="base64 of the file's bytes")
    format: Literal["wav", "mp3", "flac", "ogg"]


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class Graph(_Strict):
    edge_index: list[list[int]] | None = Field(None, description="(2, num_edges) node indices")
    x: list[list[float]] | None = Field(None, description="(num_nodes, features) node features")
    num_nodes: int | None = Field(None, ge=1)
    data: str | None = Field(None, description="GraphML / GML / edge-list text")
    format: Literal["graphml", "gml", "edgelist"] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "Graph":
        if (self.data is None) == (self.edge_index is None):
            raise ValueError("give either 'edge_index' (with optional 'x', 'num_nodes') or 'data' with 'format'")
        if self.data is not None and self.format is None:
            raise ValueError(f"'data' needs 'format' ({', '.join(GRAPH_FORMATS)})")
        if self.data is not None and (self.x is not None or self.num_nodes is not None):
            raise ValueError("'x' and 'num_nodes' go with 'edge_index', not with 'data'")
        return self


class GraphPart(_Strict):
    type: Literal["graph"]
    graph: Graph


class PointsPart(_Strict):
    type: Literal["3d"]
    points: list[list[float]] | None = Field(None, description="(N, 3 + C) coordinates")
    data: str | None = Field(None, description="base64 of a ply/obj/off/stl/xyz/npy file")
    format: Literal["ply", "obj", "off", "stl", "xyz", "npy"] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "PointsPart":
        if (self.points is None) == (self.data is None):
            raise ValueError("give either 'points' or 'data' (base64) with 'format'")
        if self.data is not None and self.format is None:
            raise ValueError(f"'data' needs 'format' ({', '.join(POINTS_FORMATS)})")
        return self


#: one typed part, discriminated by ``type``
PART = TypeAdapter(Annotated[Union[TextPart, ImagePart, AudioPart, GraphPart, PointsPart], Field(discriminator="type")])
#: part ``type`` -> the modality its item belongs to
PART_MODALITY = {"text": "text", "image_url": "image", "input_audio": "audio", "graph": "graph", "3d": "3d"}


# -- response -----------------------------------------------------------------------------------
class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 little-endian float32")
    tokens: str | None = Field(None, description="return_tokens: T x D little-endian float32, base64, row-major")
    num_tokens: int | None = Field(None, description="return_tokens: T")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    tokens_by_modality: dict[str, int] = Field(default_factory=dict, description="tokens per modality (extension)")


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modality-hub"
    encoder: str
    modality: str
    dim: int
    space: str
    runtime: Literal["torch", "onnx"]
    device: str
    matryoshka_dims: list[int] | None = None
    limits: dict[str, Any]
    # -- chat models (issue 13, hub/serve/chat.py) --
    kind: Literal["embeddings", "chat"] = "embeddings"
    plugged: dict[str, dict[str, Any]] | None = Field(None, description="chat: the modalities plugged into the LM")
    context_window: int | None = Field(None, description="chat: the backbone's context window in tokens")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
