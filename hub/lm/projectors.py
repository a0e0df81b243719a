"""Projectors: trainable bridges from an encoder's token space into a backbone's.

A projector maps ``(batch, tokens, in_dim)`` encoder tokens (with their mask) to
``(batch, tokens', out_dim)`` tokens in a backbone's embedding space.  Kinds are
registered through the ``register_projectors`` hook (each with its own pydantic
config model); the core registers four, plugins may add more:

* ``linear`` — one ``nn.Linear`` per token (Qwen2-Audio's ``multi_modal_projector``);
* ``mlp`` — LLaVA's ``mlp{depth}x_gelu``: ``linear_1``, then (GELU, ``linear_i``)
  repeated; parameter names match transformers' ``LlavaMultiModalProjector``
  (``linear_1.weight``, ``linear_2.weight``, ...), so its ``state_dict()`` loads
  as is (the transformers adapter's importers copy LLaVA / Qwen2-Audio weights);
* ``pool`` — average of each window of ``stride`` real tokens (Qwen2-Audio's
  ``avg_pooler``), an optional LayerNorm, then ``nn.Linear``;
* ``resampler`` — ``num_queries`` learned queries cross-attend to the tokens
  (Perceiver-resampler / Q-Former style): a fixed token count per item.

Padding never changes real outputs: padded input rows are zeroed before use and
padded output rows are zero.  ``num_tokens(n)`` says, before running, how many
tokens ``n`` real input tokens become.  A projector saves as
``projector.json`` (its :class:`ProjectorConfig`) + ``projector.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from .._registry import Registry, default_registry
from ..errors import BundleError, InvalidInputError, InvalidOptionsError, SpaceMismatchError
from ..hookspecs import hookimpl
from ..specs import ProjectorSpec
from ..tokens import TokenEmbeddings
from ..weights import tensor_problems

__all__ = [
    "ProjectorConfig",
    "LinearConfig",
    "MLPConfig",
    "PoolConfig",
    "ResamplerConfig",
    "projector_config",
    "Projector",
    "LinearProjector",
    "MLPProjector",
    "PoolProjector",
    "ResamplerProjector",
    "PROJECTOR_KINDS",
    "build_projector",
    "InvalidWeightsError",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "projector.json"
WEIGHTS_NAME = "projector.safetensors"



class InvalidWeightsError(BundleError):
    """A weights file is corrupt, or its tensors do not match the config (names, shapes): a :class:`BundleError`."""


class ProjectorConfig(BaseModel):
    """What every projector config holds; each kind extends it with its own fields (``extra="forbid"``).

    Saved as ``projector.json``; :func:`projector_config` validates a dict through the kind's model
    (looked up in the registry).
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    in_dim: int = Field(ge=1, description="width of the encoder's tokens")
    out_dim: int = Field(ge=1, description="the backbone's hidden size")
    bias: bool = True
    seed: int | None = Field(0, description="init seed (None: from the global RNG)")

    @property
    def inner_dim(self) -> int:
        """mlp / resampler inner width (``hidden_dim`` or ``out_dim``)."""
        return getattr(self, "hidden_dim", None) or self.out_dim


class LinearConfig(ProjectorConfig):
    kind: Literal["linear"] = "linear"


class MLPConfig(ProjectorConfig):
    kind: Literal["mlp"] = "mlp"
    depth: int = Field(2, ge=1, description="number of Linear layers (GELU between); 2 = LLaVA mlp2x_gelu")
    hidden_dim: int | None = Field(None, ge=1, description="inner width (default out_dim)")


class PoolConfig(ProjectorConfig):
    kind: Literal["pool"] = "pool"
    stride: int = Field(2, ge=1, description="tokens averaged per output token")
    norm: bool = Field(False, description="LayerNorm(in_dim) after pooling (Qwen2-Audio's encoder layer_norm)")


class ResamplerConfig(ProjectorConfig):
    kind: Literal["resampler"] = "resampler"
    num_queries: int = Field(32, ge=1, description="output tokens per item")
    heads: int = Field(8, ge=1, description="attention heads (must divide the inner width)")
    hidden_dim: int | None = Field(None, ge=1, description="inner width (default out_dim)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ResamplerConfig":
        if self.inner_dim % self.heads:
            raise ValueError(
                f"resampler heads={self.heads} must divide the inner width {self.inner_dim} "
                f"(hidden_dim={self.hidden_dim}, out_dim={self.out_dim}); choose heads among "
                f"{[h for h in range(1, self.inner_dim + 1) if self.inner_dim % h == 0]} or change hidden_dim"
            )
        return self


#: fields that format-1 ``projector.json`` files wrote for every kind; a kind that does not use one ignores it
_LEGACY_FIELDS = frozenset({"depth", "hidden_dim", "num_queries", "heads", "stride", "norm"})


class Projector(nn.Module):
    """Base class: ``forward(tokens, mask) -> (tokens', mask')``; see the module docstring.

    Subclasses set ``kind`` and ``config_model`` (their pydantic config, a
    :class:`ProjectorConfig` subclass), build their layers in ``_build`` and
    implement ``_project`` and ``num_tokens``; a plugin registers them with
    ``register_projectors``.  Construction is deterministic for a given ``config.seed``.
    """

    kind: ClassVar[str] = ""
    config_model: ClassVar[type[ProjectorConfig]] = ProjectorConfig
    per_token: ClassVar[bool] = True  # output token i comes from input token i alone

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise InvalidOptionsError(
                f"{type(self).__name__} builds kind {self.kind!r}, got a config of kind {config.kind!r}; "
                "use build_projector() or Projector.from_config()"
            )
        self.config = config
        if config.seed is None:
            self._build(config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self._build(config)

    # -- to implement ----------------------------------------------------------
    def _build(self, config: ProjectorConfig) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _project(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def num_tokens(self, n: int) -> int:  # pragma: no cover - abstract
        """How many output tokens ``n`` real input tokens yield (known before running)."""
        raise NotImplementedError

    # -- construction ----------------------------------------------------------
    @staticmethod
    def from_config(config: ProjectorConfig | Mapping[str, Any], registry: Registry | None = None) -> "Projector":
        """The projector of ``config``'s kind (looked up in the registry)."""
        registry = registry or default_registry()
        if not isinstance(config, ProjectorConfig):
            config = projector_config(dict(config), registry=registry)
        return registry.projector(config.kind).cls(config)

    # -- running ---------------------------------------------------------------
    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, T, in_dim)`` float + ``(batch, T)`` bool → ``(batch, T', out_dim)``, ``(batch, T')`` bool."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            self._check(tokens, mask)
        mask = mask.bool()
        tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding never leaks (even NaN / inf)
        out, out_mask = self._project(tokens, mask)
        return out.masked_fill(~out_mask.unsqueeze(-1), 0.0), out_mask  # (batch, T', out_dim), (batch, T')

    def project(self, te: TokenEmbeddings, space: str) -> TokenEmbeddings:
        """Project a batch of token embeddings into ``space`` (a backbone's token space)."""
        if te.dim != self.in_dim:
            raise SpaceMismatchError(
                f"{self.kind} projector takes tokens of dim {self.in_dim}; got {te.modality} tokens of dim "
                f"{te.dim} from space {te.space!r}. Build the projector with in_dim={te.dim}, or use the "
                "encoder this projector was trained for"
            )
        tokens, mask = self(te.tokens.to(self.device, self.dtype), te.mask.to(self.device))
        return TokenEmbeddings(
            tokens,
            mask,
            te.modality,
            space,
            te.pooling if self.per_token else "mean",
            list(te.indices or []),
            list(te.errors),
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, in_dim={self.in_dim}, out_dim={self.out_dim}"

    def _check(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        if tokens.ndim != 3 or not tokens.is_floating_point():
            raise InvalidInputError(
                f"{self.kind} projector takes float tokens of shape (batch, tokens, {self.in_dim}); "
                f"got {tokens.dtype} of shape {tuple(tokens.shape)}"
            )
        if tokens.shape[-1] != self.in_dim:
            raise SpaceMismatchError(
                f"{self.kind} projector takes tokens of dim {self.in_dim}; got dim {tokens.shape[-1]} "
                f"(shape {tuple(tokens.shape)}). Build it with in_dim={tokens.shape[-1]} or use the matching encoder"
            )
        if tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise InvalidInputError(
                f"{self.kind} projector: mask must be (batch, tokens) = {tuple(tokens.shape[:2])}; "
                f"got {tuple(mask.shape)}"
            )

    @staticmethod
    def _check_count(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInputError(f"num_tokens takes a token count >= 0; got {n!r}")
        return n

    # -- weights ---------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``directory/projector.json`` + ``projector.safetensors`` atomically (staged beside, then swapped;
        into an empty directory or one holding other files too, file by file, the config last)."""
        from safetensors.torch import save

        from .._atomic import atomic_dir, atomic_write_bytes

        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        blobs = {WEIGHTS_NAME: save(state, metadata={"format": "pt"}),
                 CONFIG_NAME: (self.config.model_dump_json(indent=2) + "\n").encode()}
        path = Path(directory)
        if path.is_dir() and (not os.listdir(path) or set(os.listdir(path)) - set(blobs)):  # e.g. a staged bundle
            for name, data in blobs.items():
                atomic_write_bytes(path / name, data)
            return
        with atomic_dir(path, marker=CONFIG_NAME, what="a saved projector", allowed=blobs) as stage:
            for name, data in blobs.items():  # the config last: a stage without it is torn
                (stage / name).write_bytes(data)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
             registry: Registry | None = None) -> "Projector":
        """Rebuild a projector saved with :meth:`save` (safetensors only, no pickle).  Nothing is allocated before
        the files are checked: ``projector.json`` under a size cap, its widths capped, the layers it describes
        built on the ``meta`` device, the safetensors header naming exactly those tensors, shapes and float
        dtypes (:mod:`hub._manifest`).  Refusals are :class:`~hub.errors.BundleError`."""
        from safetensors.torch import load_file

        from .._manifest import (CONFIG_MAX_BYTES, BundleConfigError, BundleFileMissingError, check_tensors,
                                 check_widths, read_json)

        path = Path(directory)
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        for file in (config_path, weights_path):
            if not file.is_file():
                raise BundleFileMissingError(
                    f"projector in {str(path)!r}: {file.name} is missing. A saved projector is a directory "
                    f"holding {CONFIG_NAME} and {WEIGHTS_NAME} (written by Projector.save)"
                )
        raw = read_json(config_path, CONFIG_NAME, CONFIG_MAX_BYTES, error=BundleConfigError)
        try:
            config = projector_config(raw, source=str(config_path), registry=registry, legacy=True)
        except InvalidOptionsError as exc:
            raise BundleConfigError(str(exc)) from None
        if cls is not Projector and config.kind != cls.kind:
            raise BundleConfigError(
                f"{str(config_path)!r} holds a {config.kind!r} projector, not {cls.kind!r}; use Projector.load"
            )
        check_widths(config.model_dump(), str(config_path))
        with torch.device("meta"):  # names and shapes without memory
            shapes = {k: tuple(v.shape) for k, v in Projector.from_config(config, registry).state_dict().items()}
        check_tensors(weights_path, shapes, f"a {config.kind} projector {config.model_dump(exclude={'seed'})}",
                      error=InvalidWeightsError, hint="The weights belong to another config, or the file is not a "
                      "readable safetensors file; re-save the projector")
        try:
            state = load_file(str(weights_path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... all mean a corrupt file
            raise InvalidWeightsError(
                f"{str(weights_path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                "re-save the projector"
            ) from exc
        projector = Projector.from_config(config, registry)
        projector.load_torch_state(state, source=str(weights_path))
        return projector.to(device)

    def load_torch_state(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy ``state`` in after checking tensor names and shapes against this projector."""
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        problems = tensor_problems(expected, {k: tuple(v.shape) for k, v in state.items()})
        if problems:
            raise InvalidWeightsError(
                f"{source} does not match a {self.kind} projector {self.config.model_dump(exclude={'seed'})}: "
                + ", ".join(problems)
                + ". The weights belong to another config; save them together with their own projector.json"
            )
        self.load_state_dict(dict(state), strict=True)


# -- the four kinds -------------------------------------------------------------------


class LinearProjector(Projector):
    """One ``nn.Linear(in_dim, out_dim)`` per token (named ``linear``, as Qwen2-Audio's)."""

    kind = "linear"
    config_model = LinearConfig

    def _build(self, config: ProjectorConfig) -> None:
        self.linear = nn.Linear(config.in_dim, config.out_dim, bias=config.bias)

    def _project(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(tokens), mask  # (batch, T, out_dim)

    def num_tokens(self, n: int) -> int:
        return self._check_count(n)


class MLPProjector(Projector):
    """LLaVA's ``mlp{depth}x_gelu``: ``linear_1`` then (GELU, ``linear_i``) for i = 2..depth.

    ``linear_1``: in_dim → hidden; middle layers hidden → hidden; the last → out_dim
    (``depth=1``: one Linear in_dim → out_dim).  With ``depth=2`` and
    ``hidden_dim=None`` the ``state_dict`` is that of transformers'
    ``LlavaMultiModalProjector``.
    """

    kind = "mlp"
    config_model = MLPConfig

    def _build(self, config: ProjectorConfig) -> None:
        widths = [config.in_dim] + [config.inner_dim] * (config.depth - 1) + [config.out_dim]
        self.act = nn.GELU()
        self._layers = [f"linear_{i + 1}" for i in range(config.depth)]
        for name, (a, b) in zip(self._layers, zip(widths[:-1], widths[1:])):
            self.add_module(name, nn.Linear(a, b, bias=config.bias))

    def _project(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = getattr(self, self._layers[0])(tokens)  # (batch, T, hidden)
        for name in self._layers[1:]:
            x = getattr(self, name)(self.act(x))
        return x, mask  # (batch, T, out_dim)

    def num_tokens(self, n: int) -> int:
        return self._check_count(n)


class PoolProjector(Projector):
    """Average each window of ``stride`` tokens (real ones only), optional LayerNorm, then Linear.

    Output token j averages the real tokens among inputs ``j*stride .. j*stride+stride-1``;
    a window with no real token is masked out.  ``ceil(n / stride)`` tokens per item.
    """

    kind = "pool"
    config_model = PoolConfig

    def _build(self, config: ProjectorConfig) -> None:
        self.stride = config.stride
        self.norm = nn.LayerNorm(config.in_dim) if config.norm else None
        self.linear = nn.Linear(config.in_dim, config.out_dim, bias=config.bias)

    def _project(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, dim = tokens.shape
        windows = -(-length // self.stride)
        pad = windows * self.stride - length
        x = nn.functional.pad(tokens, (0, 0, 0, pad)).view(batch, windows, self.stride, dim)
        m = nn.functional.pad(mask, (0, pad), value=False).view(batch, windows, self.stride)
        count = m.sum(-1, keepdim=True)  # (batch, windows, 1)
        pooled = x.sum(2) / count.clamp(min=1).to(x.dtype)  # (batch, windows, in_dim); padding is zero
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.linear(pooled), count.squeeze(-1) > 0  # (batch, windows, out_dim), (batch, windows)

    def num_tokens(self, n: int) -> int:
        return -(-self._check_count(n) // self.stride)


class ResamplerProjector(Projector):
    """``num_queries`` learned queries cross-attend to the tokens (one Q-Former-style block).

    queries → LayerNorm → MultiheadAttention over ``kv_proj(tokens)`` (padding masked
    out) → residual → LayerNorm + GELU feed-forward → residual → LayerNorm → Linear
    to out_dim.  Every item yields ``num_queries`` tokens (none when it has no
    real token).
    """

    kind = "resampler"
    config_model = ResamplerConfig
    per_token = False

    def _build(self, config: ProjectorConfig) -> None:
        width = config.inner_dim
        self.queries = nn.Parameter(torch.randn(config.num_queries, width) * 0.02)  # (queries, hidden)
        self.kv_proj = nn.Linear(config.in_dim, width, bias=config.bias)
        self.kv_norm = nn.LayerNorm(width)
        self.query_norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, config.heads, bias=config.bias, batch_first=True)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 4 * width, bias=config.bias), nn.GELU(), nn.Linear(4 * width, width, bias=config.bias)
        )
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, config.out_dim, bias=config.bias)

    def _project(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokens.shape[0]
        has_tokens = mask.any(dim=1)  # (batch,)
        # An item with no real token would attend to nothing (NaN): let it attend to its zeros, then mask it out.
        key_padding = ~(mask | ~has_tokens.unsqueeze(1))  # (batch, T), True = ignore
        kv = self.kv_norm(self.kv_proj(tokens))  # (batch, T, hidden)
        q = self.query_norm(self.queries).unsqueeze(0).expand(batch, -1, -1)  # (batch, queries, hidden)
        attended, _ = self.attn(q, kv, kv, key_padding_mask=key_padding, need_weights=False)
        x = self.queries.unsqueeze(0) + attended  # (batch, queries, hidden)
        x = x + self.ffn(self.ffn_norm(x))
        out = self.out(self.out_norm(x))  # (batch, queries, out_dim)
        return out, has_tokens.unsqueeze(1).expand(-1, out.shape[1])  # (batch, queries)

    def num_tokens(self, n: int) -> int:
        return self.config.num_queries if self._check_count(n) else 0


BUILTIN: tuple[type[Projector], ...] = (LinearProjector, MLPProjector, ResamplerProjector, PoolProjector)

_DESCRIPTIONS = {
    "linear": "one Linear per token (Qwen2-Audio's multi_modal_projector)",
    "mlp": "LLaVA's mlp{depth}x_gelu",
    "resampler": "num_queries learned queries cross-attend to the tokens: a fixed count per item",
    "pool": "average of each window of stride real tokens, optional LayerNorm, then Linear (Qwen2-Audio)",
}


@hookimpl
def register_projectors(register: Any) -> None:
    """The core's projector kinds (this module is the core distribution's ``modality_hub`` entry point)."""
    for cls in BUILTIN:
        register(ProjectorSpec(kind=cls.kind, cls=cls, config=cls.config_model, description=_DESCRIPTIONS[cls.kind]))


class _Kinds(Mapping[str, type[Projector]]):
    """``PROJECTOR_KINDS``: a live, read-only view of the default registry's kinds (``kind`` → class)."""

    def __getitem__(self, kind: str) -> type[Projector]:
        try:
            return default_registry().projector(kind).cls
        except InvalidOptionsError:
            raise KeyError(kind) from None

    def __iter__(self):
        return iter(default_registry().list_projectors())

    def __len__(self) -> int:
        return len(default_registry().list_projectors())


PROJECTOR_KINDS: Mapping[str, type[Projector]] = _Kinds()
"""Registered projector kinds (``kind`` → class), read from the default registry."""


def _fields(model: type[BaseModel]) -> list[str]:
    return [f for f in model.model_fields if f not in ("kind", "in_dim", "out_dim")]


def _describe_kinds(registry: Registry) -> str:
    return "; ".join(f"{k}: {', '.join(_fields(registry.projector(k).config))}" for k in registry.list_projectors())


def projector_config(raw: Mapping[str, Any], *, source: str | None = None, registry: Registry | None = None,
                     legacy: bool = False) -> ProjectorConfig:
    """Validate a projector config dict through its kind's registered pydantic model.

    ``legacy``: drop the fields format-1 ``projector.json`` files wrote for every kind when this kind
    has no such field (reading old files)."""
    registry = registry or default_registry()
    raw = dict(raw)
    kind = raw.get("kind")
    where = f"{source}: " if source else ""
    if kind not in registry.list_projectors():
        raise InvalidOptionsError(
            f"{where}unknown projector kind {kind!r}; valid kinds: {', '.join(registry.list_projectors())}"
        )
    model = registry.projector(kind).config
    if legacy:
        raw = {k: v for k, v in raw.items() if k not in _LEGACY_FIELDS or k in model.model_fields}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        )
        raise InvalidOptionsError(
            f"{where}invalid {kind} projector config: {problems}. Options by kind: {_describe_kinds(registry)}"
        ) from None


def build_projector(kind: str, in_dim: int, out_dim: int, *, registry: Registry | None = None,
                    **options: Any) -> Projector:
    """Build a projector of ``kind`` (a registered kind) from ``in_dim`` to ``out_dim``.

    ``options`` are fields of the kind's config model; anything else raises
    :class:`InvalidOptionsError` listing what is valid.
    """
    registry = registry or default_registry()
    spec = registry.projector(kind)
    foreign = sorted(set(options) - set(spec.config.model_fields) | ({"kind", "in_dim", "out_dim"} & set(options)))
    if foreign:
        raise InvalidOptionsError(
            f"{kind} projector does not take option(s) {foreign}; it takes: "
            f"{', '.join(_fields(spec.config))}. Options by kind: {_describe_kinds(registry)}"
        )
    return spec.cls(projector_config({"kind": kind, "in_dim": in_dim, "out_dim": out_dim, **options}, registry=registry))
