"""``HFBackbone``: any transformers ``AutoModelForCausalLM`` + tokenizer as a hub backbone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from hub.backbone import Backbone
from hub.errors import HubError, InvalidInputError, InvalidOptionsError
from hub.weights import from_pretrained as _load_local

__all__ = ["HFBackbone", "UnsupportedBackboneError", "causal_lm_model_types"]

#: extra rows for added boundary tokens live here, never in the model's own table
EXTRA_EMBEDDINGS_FILE = "hub_extra_embeddings.safetensors"
#: a probe text whose tokens reveal what the tokenizer prepends (BOS or nothing)
_PROBE = "Hello world"


class UnsupportedBackboneError(HubError, ValueError):
    """The checkpoint is not a causal language model that transformers can load without remote code."""


def causal_lm_model_types() -> frozenset[str]:
    """``model_type`` values that ``AutoModelForCausalLM`` maps to a class (no remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def model_type_of(directory: Path) -> str | None:
    """The ``model_type`` in ``directory/config.json``, or None when absent or unreadable."""
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """``"float32"``/``"bfloat16"``/``"auto"``/a ``torch.dtype`` → what transformers takes."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise InvalidOptionsError(
            f"dtype {dtype!r} is not a floating-point torch dtype; use 'float32', 'bfloat16', 'float16' or 'auto'"
        )
    return resolved


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class HFBackbone(Backbone):
    """A transformers causal LM as the hub's backbone.

    Build it from a hub id or directory with :meth:`from_pretrained`, or from
    objects already in memory (``HFBackbone(model=..., tokenizer=...)``, as the
    LLaVA / Qwen2-Audio importers do).  The model's parameters are never
    changed: boundary tokens added with ``add_special_tokens(..., init=...)``
    get rows in a separate ``extra_embeddings`` table owned by this adapter.
    """

    #: the registered adapter that reloads a saved backbone (``BackboneSpec.name``)
    adapter = "transformers"

    def __init__(self, model: Any, tokenizer: Any, name: str | None = None, *, weights: str | None = None) -> None:
        super().__init__()
        if model is None or not hasattr(model, "get_input_embeddings"):
            raise InvalidOptionsError(
                f"HFBackbone needs a transformers causal LM (with get_input_embeddings), got {type(model).__name__}"
            )
        if tokenizer is None:
            raise InvalidOptionsError("HFBackbone needs the model's tokenizer (tokenizer=AutoTokenizer.from_pretrained(...))")
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = _text_config(model.config)
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.weights = weights or self.name
        self.hidden_size = int(model.get_input_embeddings().embedding_dim)
        self.max_context = self._context_window(config, tokenizer)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.insert(0, tokenizer.eos_token_id)
        #: every id that ends generation (Llama 3 has several)
        self.eos_token_ids: tuple[int, ...] = tuple(int(i) for i in eos_ids)
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = self.eos_token_id
        if pad is None:
            raise UnsupportedBackboneError(
                f"backbone {self.name!r} has neither a pad nor an EOS token; set tokenizer.pad_token before wrapping it"
            )
        self.pad_token_id = int(pad)
        self.extra_embeddings: torch.nn.Embedding | None = None
        #: factory options that rebuild this backbone from ``name`` (recorded in bundles)
        self.options: dict[str, Any] = {}
        self._prefix = self._learn_prefix()
        self.eval()

    # -- construction --------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        allow_download: bool | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
    ) -> "HFBackbone":
        """Load from a local directory or the local HF cache (safetensors only, no remote code).

        ``dtype=None`` keeps transformers' default (the checkpoint's dtype).
        Missing files raise :class:`hub.WeightsNotFoundError` saying how to provide them.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = os.fspath(source)
        local = Path(source).expanduser()
        if local.is_dir() and (local / "config.json").is_file():
            model_type = model_type_of(local)
            supported = causal_lm_model_types()
            if model_type not in supported:
                raise UnsupportedBackboneError(
                    f"{source!r} holds a {model_type!r} checkpoint, which AutoModelForCausalLM cannot load "
                    f"({len(supported)} causal-LM model types are supported, e.g. llama, qwen2, mistral, phi, gpt2). "
                    "Composite checkpoints (llava, qwen2_audio) import with h.from_transformers(path)."
                )
        kwargs: dict[str, Any] = {}
        resolved = _resolve_dtype(dtype)
        if resolved is not None:
            kwargs["dtype"] = resolved
        tokenizer = _load_local(AutoTokenizer, source, allow_download=allow_download, what="tokenizer", safetensors=False)
        model = _load_local(AutoModelForCausalLM, source, allow_download=allow_download, what="backbone", **kwargs)
        backbone = cls(model=model, tokenizer=tokenizer, name=name or source)
        if isinstance(dtype, str):
            backbone.options["dtype"] = dtype
        extra = local / EXTRA_EMBEDDINGS_FILE
        if local.is_dir() and extra.is_file():
            weight = load_file(str(extra))["weight"].to(device=backbone.device, dtype=backbone.dtype)
            backbone.extra_embeddings = torch.nn.Embedding.from_pretrained(weight, freeze=False)
        return backbone

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model (safetensors), its generation config and the tokenizer to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        if self.extra_embeddings is not None:
            save_file({"weight": self.extra_embeddings.weight.detach().cpu().contiguous()}, str(out / EXTRA_EMBEDDINGS_FILE))
        return out

    @staticmethod
    def _context_window(config: Any, tokenizer: Any) -> int:
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 10**8:
            return limit
        raise UnsupportedBackboneError(
            f"cannot tell the context window of {type(config).__name__}: no max_position_embeddings or n_positions "
            "in its config and no tokenizer.model_max_length; set config.max_position_embeddings"
        )

    def _learn_prefix(self) -> list[int]:
        """What the tokenizer itself puts before text (``[bos]`` for Llama, nothing for GPT-2 / Qwen2)."""
        full = list(self.tokenizer(_PROBE)["input_ids"])
        plain = self.tokenize(_PROBE)
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    # -- metadata ------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def vocab_rows(self) -> int:
        """Rows of the model's own input embedding table."""
        return int(self.model.get_input_embeddings().num_embeddings)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, hidden_size={self.hidden_size}, max_context={self.max_context}"

    # -- text ----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidInputError(f"tokenize expects a str, got {type(text).__name__}")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_ids(self) -> list[int]:
        return list(self._prefix)

    def token_id(self, token: str) -> int | None:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.token_to_id(token)
        return self.tokenizer.get_vocab().get(token)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def add_special_tokens(self, tokens: Sequence[str], *, init: str | None = None) -> dict[str, int]:
        """Add placeholder / boundary tokens to the tokenizer; returns ``{token: id}``.

        Tokens are added as special tokens (never split, skipped by :meth:`decode`).
        ``init=None`` (placeholders: the composer replaces them) leaves every
        table as it is.  ``init="mean"`` or ``"zeros"`` (boundary tokens, which
        need real embeddings) gives each token whose id lies beyond the model's
        table a trainable row in ``extra_embeddings``; the model's own
        parameters are never resized or changed.
        """
        inits = {"mean": self._mean_row, "zeros": self._zero_row}
        if init is not None and init not in inits:
            raise InvalidOptionsError(f"init={init!r}: use None (placeholders), 'mean' or 'zeros'")
        new = [t for t in dict.fromkeys(tokens) if self.token_id(t) is None]
        if new:
            self.tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
        ids = {t: self.token_id(t) for t in tokens}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise InvalidOptionsError(f"the tokenizer refused to add {missing}; use tokens that are not empty")
        if init is not None:
            needed = max([i - self.vocab_rows + 1 for i in ids.values()] + [0])
            have = 0 if self.extra_embeddings is None else self.extra_embeddings.num_embeddings
            if needed > have:
                rows = inits[init]().expand(needed - have, -1)  # (new, hidden)
                old = [] if self.extra_embeddings is None else [self.extra_embeddings.weight.detach()]
                weight = torch.cat(old + [rows], dim=0)  # (extra, hidden)
                self.extra_embeddings = torch.nn.Embedding.from_pretrained(weight.clone(), freeze=False)
        return dict(ids)  # type: ignore[arg-type]

    def _mean_row(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach().mean(dim=0, keepdim=True)  # (1, hidden)

    def _zero_row(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, dtype=self.dtype, device=self.device)  # (1, hidden)

    # -- tensors -------------------------------------------------------------------
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.model.get_input_embeddings()
        rows = self.vocab_rows
        extra = 0 if self.extra_embeddings is None else self.extra_embeddings.num_embeddings
        ids = ids.to(self.device)
        bad = (ids < 0) | (ids >= rows + extra)  # (batch, seq)
        if bool(bad.any()):
            values = sorted(set(ids[bad].tolist()))
            names = [self.tokenizer.convert_ids_to_tokens(v) if v >= 0 else None for v in values[:5]]
            raise InvalidInputError(
                f"token ids {values[:5]} ({names}) lie outside backbone {self.name!r}'s embedding table "
                f"({rows} rows + {extra} extra). Placeholder tokens must be replaced by modality embeddings "
                "before embedding; boundary tokens need rows: add them with add_special_tokens(tokens, init='mean')."
            )
        if extra == 0 or not bool((ids >= rows).any()):
            return table(ids)  # (batch, seq, hidden)
        is_extra = ids >= rows  # (batch, seq)
        base = table(ids.clamp(max=rows - 1))  # (batch, seq, hidden)
        added = self.extra_embeddings((ids - rows).clamp(min=0)).to(base.dtype)  # (batch, seq, hidden)
        return torch.where(is_extra.unsqueeze(-1), added, base)

    def _check_inputs(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, extra_tokens: int = 0) -> None:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.hidden_size:
            raise InvalidInputError(
                f"inputs_embeds must be (batch, seq, {self.hidden_size}) for backbone {self.name!r}, "
                f"got {tuple(inputs_embeds.shape)}; project modality tokens to the backbone's hidden size first"
            )
        if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
            raise InvalidInputError(
                f"attention_mask {tuple(attention_mask.shape)} must match inputs_embeds' (batch, seq) "
                f"{tuple(inputs_embeds.shape[:2])}"
            )
        total = inputs_embeds.shape[1] + extra_tokens
        if total > self.max_context:
            raise InvalidInputError(
                f"{inputs_embeds.shape[1]} input tokens + {extra_tokens} new tokens = {total} exceed backbone "
                f"{self.name!r}'s context window of {self.max_context} by {total - self.max_context}; "
                "shorten the prompt, use fewer items or ask for fewer new tokens"
            )

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # (batch, seq, hidden)
        attention_mask: torch.Tensor,  # (batch, seq) long/bool, 0 on padding
        position_ids: torch.Tensor,  # (batch, seq)
    ) -> torch.Tensor:
        """Float32 logits (batch, seq, vocab); gradients flow to ``inputs_embeds``."""
        self._check_inputs(inputs_embeds, attention_mask)
        if tuple(position_ids.shape) != tuple(attention_mask.shape):
            raise InvalidInputError(
                f"position_ids {tuple(position_ids.shape)} must match attention_mask {tuple(attention_mask.shape)}"
            )
        out = self.model(
            inputs_embeds=inputs_embeds.to(device=self.device, dtype=self.dtype),
            attention_mask=attention_mask.to(self.device).long(),
            position_ids=position_ids.to(self.device).long(),
            use_cache=False,
        )
        return out.logits.float()  # (batch, seq, vocab)

    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,  # (batch, seq, hidden), left-padded
        attention_mask: torch.Tensor,  # (batch, seq)
        max_new_tokens: int,
        **kwargs: Any,
    ) -> list[list[int]]:
        """New token ids per sequence, up to and including the first EOS (padding after it removed).

        KV-cached ``model.generate``; greedy unless ``kwargs`` say otherwise
        (e.g. ``do_sample=True, temperature=0.7``).  Position ids follow the
        attention mask, so left padding changes nothing.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise InvalidInputError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        self._check_inputs(inputs_embeds, attention_mask, extra_tokens=max_new_tokens)
        if max_new_tokens == 0:
            return [[] for _ in range(inputs_embeds.shape[0])]
        options: dict[str, Any] = {"do_sample": False, "pad_token_id": self.pad_token_id}
        if self.eos_token_ids:
            options["eos_token_id"] = list(self.eos_token_ids)
        if not kwargs.get("do_sample"):  # silence sampling defaults from the checkpoint's generation config
            options.update(temperature=None, top_p=None, top_k=None)
        options.update(kwargs)
        out = self.model.generate(
            inputs_embeds=inputs_embeds.to(device=self.device, dtype=self.dtype),
            attention_mask=attention_mask.to(self.device).long(),
            max_new_tokens=max_new_tokens,
            **options,
        )
        sequences = getattr(out, "sequences", out)  # (batch, new) — only new tokens when no input_ids are given
        stops = set(self.eos_token_ids)
        result = []
        for row in sequences.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            result.append(row[:cut])
        return result

    # -- streaming (added for the chat server, hub/serve/chat_engine.py) --------------
    @torch.no_grad()
    def generate_stream(
        self,
        inputs_embeds: torch.Tensor,  # (1, seq, hidden)
        attention_mask: torch.Tensor,  # (1, seq)
        max_new_tokens: int,
        on_tokens: Callable[[list[int]], bool],
        **kwargs: Any,
    ) -> list[list[int]]:
        """:meth:`generate` for one sequence, calling ``on_tokens(new_ids)`` after every new token
        (all new ids so far, EOS included); generation stops early when it returns True (a stop
        string was written, the client went away).

        The hook is a transformers ``StoppingCriteria``: it runs after each token is chosen and
        touches neither the logits nor the random state, so the tokens are :meth:`generate`'s.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
            raise InvalidInputError(f"generate_stream takes one sequence (1, seq, hidden), got {tuple(inputs_embeds.shape)}")

        class _Hook(StoppingCriteria):
            offset: int | None = None

            def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
                if self.offset is None:  # only new ids when generating from inputs_embeds; skip any prompt ids
                    self.offset = input_ids.shape[1] - 1
                stop = bool(on_tokens(input_ids[0, self.offset:].tolist()))
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        criteria = StoppingCriteriaList([_Hook(), *(kwargs.pop("stopping_criteria", None) or [])])
        return self.generate(inputs_embeds, attention_mask, max_new_tokens, stopping_criteria=criteria, **kwargs)
