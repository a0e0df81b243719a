"""Tiny offline backbones: random-init Llama / Qwen2 / GPT-2 with a byte-level BPE trained in-process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ._backbone import HFBackbone

__all__ = ["tiny_backbone", "tiny_tokenizer", "TinyBackboneOptions", "TINY_FAMILIES"]

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
VOCAB_SIZE = 384

#: training text for the tiny tokenizer (fixed, so the vocabulary is the same everywhere)
CORPUS = """\
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a sunny windowsill.
Describe the image and compare it with the audio clip. What is in the picture? There is a dog and a cat.
Everything as tokens: text, images, audio, graphs and point clouds become embeddings for a language model.
The model reads the prompt, looks at each image, listens to each sound and answers the question.
A red ball, a blue box and a green tree stand in the garden; the children play with the ball.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024. Questions? Answers! Lists, commas; colons: and quotes "like this".
"""


class TinyBackboneOptions(BaseModel):
    """Options of the ``tiny-*`` presets (untrained; tests and demos only)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="torch seed of the random init")
    hidden_size: int = Field(32, ge=8, description="width of the token embeddings")
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1, description="attention heads (hidden_size must divide by it)")
    max_position_embeddings: int = Field(512, ge=16, description="context window in tokens")


@dataclass(frozen=True)
class TinyFamily:
    """How one model family's tiny preset is configured."""

    config: Callable[[TinyBackboneOptions, int, dict[str, int]], Any]
    add_bos: bool


def _llama(o: TinyBackboneOptions, vocab: int, ids: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=o.hidden_size, intermediate_size=o.hidden_size * 2,
        num_hidden_layers=o.num_layers, num_attention_heads=o.num_heads,
        num_key_value_heads=max(1, o.num_heads // 2), max_position_embeddings=o.max_position_embeddings,
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD],
    )


def _qwen2(o: TinyBackboneOptions, vocab: int, ids: dict[str, int]) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab, hidden_size=o.hidden_size, intermediate_size=o.hidden_size * 2,
        num_hidden_layers=o.num_layers, num_attention_heads=o.num_heads,
        num_key_value_heads=max(1, o.num_heads // 2), max_position_embeddings=o.max_position_embeddings,
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD],
    )


def _gpt2(o: TinyBackboneOptions, vocab: int, ids: dict[str, int]) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab, n_embd=o.hidden_size, n_layer=o.num_layers, n_head=o.num_heads,
        n_positions=o.max_position_embeddings, n_inner=o.hidden_size * 2,
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD],
    )


TINY_FAMILIES: dict[str, TinyFamily] = {
    "llama": TinyFamily(config=_llama, add_bos=True),
    "qwen2": TinyFamily(config=_qwen2, add_bos=True),
    "gpt2": TinyFamily(config=_gpt2, add_bos=False),
}


@functools.lru_cache(maxsize=None)
def _trained_bpe(add_bos: bool) -> str:
    """A byte-level BPE trained on :data:`CORPUS`, as ``tokenizer.json`` text (deterministic, ~20 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False,
        special_tokens=[UNK, BOS, EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def tiny_tokenizer(add_bos: bool = True, max_length: int = 512) -> Any:
    """A fresh ``PreTrainedTokenizerFast`` over the cached tiny BPE (safe to mutate)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_bpe(add_bos)),
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=max_length,
    )


def tiny_backbone(family: Literal["llama", "qwen2", "gpt2"] = "llama", seed: int = 0, **options: Any) -> HFBackbone:
    """An untrained backbone of ``family`` (2 layers, hidden 32 by default) with the tiny tokenizer.

    ``options``: see :class:`TinyBackboneOptions`.  Same family and options → same weights.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    from hub.errors import InvalidOptionsError

    spec = TINY_FAMILIES.get(family)
    if spec is None:
        raise InvalidOptionsError(f"unknown tiny backbone family {family!r}; choose one of {sorted(TINY_FAMILIES)}")
    opts = TinyBackboneOptions(seed=seed, **options)
    if opts.hidden_size % opts.num_heads:
        raise InvalidOptionsError(
            f"hidden_size {opts.hidden_size} must divide by num_heads {opts.num_heads}; "
            f"e.g. hidden_size={opts.num_heads * max(1, opts.hidden_size // opts.num_heads)}"
        )
    tokenizer = tiny_tokenizer(spec.add_bos, opts.max_position_embeddings)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD)}
    config = spec.config(opts, len(tokenizer), ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])
    backbone = HFBackbone(model=model, tokenizer=tokenizer, name=f"tiny-{family}", weights=f"random-init(seed={opts.seed})")
    backbone.options = opts.model_dump()
    return backbone
