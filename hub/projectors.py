"""Projectors: trainable bridges from an encoder's token space into a backbone's.

A projector maps ``(batch, tokens, in_dim)`` encoder tokens (with their mask) to
``(batch, tokens', out_dim)`` tokens in a backbone's embedding space.  Four kinds
are registered in :data:`PROJECTOR_KINDS`:

* ``linear`` — one ``nn.Linear`` per token (Qwen2-Audio's ``multi_modal_projector``);
* ``mlp`` — LLaVA's ``mlp{depth}x_gelu``: ``linear_1``, then (GELU, ``linear_i``)
  repeated; parameter names match transformers' ``LlavaMultiModalProjector``
  (``linear_1.weight``, ``linear_2.weight``, ...), so its ``state_dict()`` loads
  as is (see :meth:`Projector.load_state_from_llava`);
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

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from .errors import HubError, InvalidInputError, InvalidOptionsError, SpaceMismatchError, WeightsNotFoundError
from .tokens import TokenEmbeddings

__all__ = [
    "ProjectorConfig",
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

ProjectorKind = Literal["linear", "mlp", "resampler", "pool"]


class InvalidWeightsError(HubError, ValueError):
    """A weights file is corrupt, or its tensors do not match the config (names, shapes)."""


class ProjectorConfig(BaseModel):
    """Everything needed to rebuild a projector; saved as ``projector.json``."""

    model_config = ConfigDict(extra="forbid")

    kind: ProjectorKind
    in_dim: int = Field(ge=1, description="width of the encoder's tokens")
    out_dim: int = Field(ge=1, description="the backbone's hidden size")
    depth: int = Field(2, ge=1, description="mlp: number of Linear layers (GELU between); 2 = LLaVA mlp2x_gelu")
    hidden_dim: int | None = Field(None, ge=1, description="mlp / resampler inner width (default out_dim)")
    num_queries: int = Field(32, ge=1, description="resampler: output tokens per item")
    heads: int = Field(8, ge=1, description="resampler: attention heads (must divide the inner width)")
    stride: int = Field(2, ge=1, description="pool: tokens averaged per output token")
    norm: bool = Field(False, description="pool: LayerNorm(in_dim) after pooling (Qwen2-Audio's encoder layer_norm)")
    bias: bool = True
    seed: int | None = Field(0, description="init seed (None: from the global RNG)")

    @property
    def inner_dim(self) -> int:
        """mlp / resampler inner width."""
        return self.hidden_dim or self.out_dim

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ProjectorConfig":
        if self.kind == "resampler" and self.inner_dim % self.heads:
            raise ValueError(
                f"resampler heads={self.heads} must divide the inner width {self.inner_dim} "
                f"(hidden_dim={self.hidden_dim}, out_dim={self.out_dim}); choose heads among "
                f"{[h for h in range(1, self.inner_dim + 1) if self.inner_dim % h == 0]} or change hidden_dim"
            )
        return self


class Projector(nn.Module):
    """Base class: ``forward(tokens, mask) -> (tokens', mask')``; see the module docstring.

    Subclasses set ``kind`` and ``options`` (the config fields they use besides
    ``in_dim``/``out_dim``/``seed``), build their layers in ``_build`` and
    implement ``_project`` and ``num_tokens``.  Construction is deterministic
    for a given ``config.seed``.
    """

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
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
    def from_config(config: ProjectorConfig | Mapping[str, Any]) -> "Projector":
        """The projector of ``config``'s kind (looked up in :data:`PROJECTOR_KINDS`)."""
        if not isinstance(config, ProjectorConfig):
            config = _validate_config(dict(config))
        return PROJECTOR_KINDS[config.kind](config)

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
        """Write ``directory/projector.json`` and ``directory/projector.safetensors``."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt", "kind": self.kind})
        (path / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "Projector":
        """Rebuild a projector saved with :meth:`save` (safetensors only, no pickle)."""
        from safetensors.torch import load_file

        path = Path(directory)
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        for file in (config_path, weights_path):
            if not file.is_file():
                raise WeightsNotFoundError(
                    f"projector in {str(path)!r}: {file.name} is missing. A saved projector is a directory "
                    f"holding {CONFIG_NAME} and {WEIGHTS_NAME} (written by Projector.save)"
                )
        try:
            raw = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidOptionsError(f"{str(config_path)!r} is not valid JSON ({exc}); re-save the projector") from exc
        if not isinstance(raw, dict):
            raise InvalidOptionsError(f"{str(config_path)!r} must hold a JSON object; got {type(raw).__name__}")
        config = _validate_config(raw, source=str(config_path))
        if cls is not Projector and config.kind != cls.kind:
            raise InvalidOptionsError(
                f"{str(config_path)!r} holds a {config.kind!r} projector, not {cls.kind!r}; use Projector.load"
            )
        try:
            state = load_file(str(weights_path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... all mean a corrupt file
            raise InvalidWeightsError(
                f"{str(weights_path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                "re-save the projector"
            ) from exc
        projector = Projector.from_config(config)
        projector.load_torch_state(state, source=str(weights_path))
        return projector.to(device)

    def load_torch_state(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy ``state`` in after checking tensor names and shapes against this projector."""
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = [f"{k}: expected {expected[k]}, got {got[k]}" for k in sorted(set(expected) & set(got))
                 if expected[k] != got[k]]
        problems = []
        if missing:
            problems.append(f"missing tensors {missing}")
        if unexpected:
            problems.append(f"unexpected tensors {unexpected}")
        if wrong:
            problems.append("shape mismatch " + "; ".join(wrong))
        if problems:
            raise InvalidWeightsError(
                f"{source} does not match a {self.kind} projector {self.config.model_dump(exclude={'seed'})}: "
                + ", ".join(problems)
                + ". The weights belong to another config; save them together with their own projector.json"
            )
        self.load_state_dict(dict(state), strict=True)

    # -- importers ---------------------------------------------------------------
    def load_state_from_llava(self, projector_module: nn.Module) -> "Projector":
        """Copy a transformers ``LlavaMultiModalProjector``'s weights into this ``mlp`` projector.

        The parameter names are the same (``linear_1``, ``linear_2``), so this is a
        checked ``load_state_dict``; outputs are then bit-identical.  The LLaVA
        activation must be exact GELU (``projector_hidden_act="gelu"``).
        """
        if self.kind != "mlp":
            raise InvalidOptionsError(f"load_state_from_llava needs an 'mlp' projector; this one is {self.kind!r}")
        act = getattr(projector_module, "act", None)
        probe = torch.linspace(-8.0, 8.0, 1025)
        with torch.no_grad():
            exact = act is not None and torch.equal(act(probe), nn.functional.gelu(probe))
        if not exact:
            raise InvalidOptionsError(
                f"the LLaVA projector's activation ({type(act).__name__}) is not exact GELU; mlp projectors use "
                "nn.GELU() as LLaVA's projector_hidden_act='gelu' does"
            )
        self.load_torch_state(projector_module.state_dict(), source=type(projector_module).__name__)
        return self

    @classmethod
    def from_llava(cls, projector_module: nn.Module) -> "Projector":
        """An ``mlp`` projector equal to a transformers ``LlavaMultiModalProjector``."""
        l1, l2 = projector_module.linear_1, projector_module.linear_2
        projector = build_projector(
            "mlp", l1.in_features, l2.out_features, depth=2, hidden_dim=l1.out_features, bias=l1.bias is not None
        )
        return projector.load_state_from_llava(projector_module)

    @classmethod
    def from_qwen2_audio(
        cls, projector_module: nn.Module, layer_norm: nn.LayerNorm | None = None, stride: int | None = None
    ) -> "Projector":
        """A projector equal to Qwen2-Audio's ``multi_modal_projector`` (one ``linear``).

        With ``stride`` (the audio tower's ``avg_pooler``, 2) and optionally
        ``layer_norm`` (the audio tower's ``layer_norm``, applied after pooling),
        it is a ``pool`` projector that also does the tower's last two steps.
        Qwen2-Audio's ``AvgPool1d`` drops a trailing odd frame; ``pool`` keeps it
        as a window of one (ceil), so outputs agree on even lengths.
        """
        linear: nn.Linear = projector_module.linear
        if stride is None and layer_norm is None:
            projector = build_projector("linear", linear.in_features, linear.out_features, bias=linear.bias is not None)
            projector.load_torch_state(projector_module.state_dict(), source=type(projector_module).__name__)
            return projector
        projector = build_projector(
            "pool", linear.in_features, linear.out_features, stride=stride or 1,
            norm=layer_norm is not None, bias=linear.bias is not None,
        )
        state = {f"linear.{k}": v for k, v in linear.state_dict().items()}
        if layer_norm is not None:
            if not math.isclose(layer_norm.eps, 1e-5) or not layer_norm.elementwise_affine:
                raise InvalidOptionsError(
                    f"pool projectors use LayerNorm(eps=1e-5, affine); got eps={layer_norm.eps}, "
                    f"elementwise_affine={layer_norm.elementwise_affine}"
                )
            state.update({f"norm.{k}": v for k, v in layer_norm.state_dict().items()})
        projector.load_torch_state(state, source="Qwen2-Audio projector")
        return projector


# -- the four kinds -------------------------------------------------------------------


class LinearProjector(Projector):
    """One ``nn.Linear(in_dim, out_dim)`` per token (named ``linear``, as Qwen2-Audio's)."""

    kind = "linear"
    options = ("bias",)

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
    options = ("depth", "hidden_dim", "bias")

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
    options = ("stride", "norm", "bias")

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
    options = ("num_queries", "heads", "hidden_dim", "bias")
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


PROJECTOR_KINDS: dict[str, type[Projector]] = {
    cls.kind: cls for cls in (LinearProjector, MLPProjector, ResamplerProjector, PoolProjector)
}
"""The registry of projector kinds: ``kind`` → class."""

_COMMON = ("in_dim", "out_dim", "seed")


def _describe_kinds() -> str:
    return "; ".join(f"{k}: {', '.join(c.options + ('seed',))}" for k, c in PROJECTOR_KINDS.items())


def _validate_config(raw: dict[str, Any], source: str | None = None) -> ProjectorConfig:
    kind = raw.get("kind")
    where = f"{source}: " if source else ""
    if kind not in PROJECTOR_KINDS:
        raise InvalidOptionsError(
            f"{where}unknown projector kind {kind!r}; valid kinds: {', '.join(PROJECTOR_KINDS)}"
        )
    try:
        return ProjectorConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        )
        raise InvalidOptionsError(
            f"{where}invalid {kind} projector config: {problems}. Options by kind: {_describe_kinds()}"
        ) from None


def build_projector(kind: str, in_dim: int, out_dim: int, **options: Any) -> Projector:
    """Build a projector of ``kind`` (see :data:`PROJECTOR_KINDS`) from ``in_dim`` to ``out_dim``.

    ``options`` are :class:`ProjectorConfig` fields that apply to the kind;
    anything else raises :class:`InvalidOptionsError` listing what is valid.
    """
    cls = PROJECTOR_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidOptionsError(f"unknown projector kind {kind!r}; valid kinds: {', '.join(PROJECTOR_KINDS)}")
    foreign = sorted(set(options) - set(cls.options) - set(_COMMON))
    if foreign:
        raise InvalidOptionsError(
            f"{kind} projector does not take option(s) {foreign}; it takes: "
            f"{', '.join(cls.options + ('seed',))}. Options by kind: {_describe_kinds()}"
        )
    return cls(_validate_config({"kind": kind, "in_dim": in_dim, "out_dim": out_dim, **options}))
