"""The transformers backbone adapter (adapters/transformers): registry, text, tensors, generation, loading."""

from __future__ import annotations

import json

import pytest
import torch

import hub
from hub.errors import InvalidInputError, InvalidOptionsError, WeightsNotFoundError

hub_transformers = pytest.importorskip("hub_transformers")
from hub_transformers import HFBackbone, UnsupportedBackboneError, tiny_backbone  # noqa: E402

FAMILIES = ["llama", "qwen2", "gpt2"]
PROMPTS = ["A photo of a cat.", "Describe the image and compare it with the audio clip please", "Hi"]


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request) -> HFBackbone:
    return tiny_backbone(request.param)


def snapshot(module: torch.nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    return {k: (v.data_ptr(), v.detach().clone()) for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, tuple[int, torch.Tensor]]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, (ptr, value) in before.items():
        assert after[k].data_ptr() == ptr, f"{k} was replaced"
        assert torch.equal(after[k], value), f"{k} changed"


def left_pad(backbone: HFBackbone, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[backbone.pad_token_id] * (width - len(r)) + r for r in rows])  # (batch, seq)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (batch, seq)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
    return ids, mask, positions


def hf_greedy(backbone: HFBackbone, ids: list[int], n: int) -> list[int]:
    """Reference: transformers' own generate on input_ids, new tokens up to the first EOS."""
    x = torch.tensor([ids])
    out = backbone.model.generate(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
        pad_token_id=backbone.pad_token_id, eos_token_id=list(backbone.eos_token_ids),
    )[0, x.shape[1]:].tolist()
    stop = next((i + 1 for i, t in enumerate(out) if t in backbone.eos_token_ids), len(out))
    return out[:stop]


# -- registry -----------------------------------------------------------------------
def test_found_through_entry_point():
    registry = hub.default_registry()
    assert "transformers" in registry.list_backbones()
    spec = registry.backbone_spec("transformers")
    assert registry.plugin_of("backbone", "transformers").distribution == "modality-hub-transformers"
    assert spec.detect("tiny-llama") and spec.detect("Qwen/Qwen2-0.5B") and not spec.detect("not a model")
    b = spec.factory("tiny-gpt2", seed=1, hidden_size=16)
    assert isinstance(b, HFBackbone) and b.hidden_size == 16 and b.options["seed"] == 1
    with pytest.raises(InvalidOptionsError, match="hidden_sise"):
        spec.factory("tiny-llama", hidden_sise=16)
    with pytest.raises(InvalidOptionsError, match="num_heads"):
        spec.factory("tiny-llama", hidden_size=30)


def test_detect_directories(tmp_path):
    detect = hub.default_registry().backbone_spec("transformers").detect
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert detect(str(tmp_path / "lm"))
    assert not detect(str(tmp_path / "enc"))
    assert not detect(str(tmp_path))  # no config.json
    with pytest.raises(UnsupportedBackboneError, match="'llava'.*from_transformers"):
        HFBackbone.from_pretrained(tmp_path / "enc")


# -- per family ---------------------------------------------------------------------
def test_metadata_and_text(backbone):
    family = backbone.name.removeprefix("tiny-")
    assert backbone.hidden_size == 32 and backbone.max_context == 512
    assert backbone.space == f"backbone/tiny-{family}"
    bos = backbone.tokenizer.bos_token_id
    assert backbone.prefix_ids() == ([] if family == "gpt2" else [bos])
    for text in PROMPTS:
        ids = backbone.tokenize(text)
        assert bos not in ids and backbone.decode(ids) == text
        assert backbone.decode(backbone.prefix_ids() + ids + [backbone.eos_token_id]) == text
    assert backbone.token_id("</s>") == backbone.eos_token_id
    assert backbone.token_id("<image>") is None
    assert backbone.dtype == torch.float32 and backbone.device.type == "cpu"


def test_forward_matches_input_ids(backbone):
    before = snapshot(backbone)
    x = torch.tensor([backbone.prefix_ids() + backbone.tokenize(PROMPTS[1])])  # (1, seq)
    embeds = backbone.embed_ids(x)  # (1, seq, hidden)
    assert embeds.shape == (1, x.shape[1], 32)
    logits = backbone(embeds, torch.ones_like(x), torch.arange(x.shape[1])[None])
    with torch.no_grad():
        ref = backbone.model(input_ids=x).logits
    assert logits.dtype == torch.float32 and logits.shape == ref.shape
    assert (logits - ref).abs().max().item() <= 1e-5
    assert_unchanged(backbone, before)


def test_left_padded_batch_equals_singles(backbone):
    rows = [backbone.prefix_ids() + backbone.tokenize(p) for p in PROMPTS]
    ids, mask, positions = left_pad(backbone, rows)
    assert len({len(r) for r in rows}) == 3 and (mask == 0).any()
    with torch.no_grad():
        batch = backbone(backbone.embed_ids(ids), mask, positions)  # (3, seq, vocab)
        for i, r in enumerate(rows):
            x = torch.tensor([r])
            single = backbone(backbone.embed_ids(x), torch.ones_like(x), torch.arange(len(r))[None])
            diff = (batch[i, -len(r):] - single[0]).abs().max().item()
            assert diff <= 1e-4, f"prompt {i}: padded batch differs from single by {diff}"


def test_generate_matches_transformers(backbone):
    before = snapshot(backbone)
    rows = [backbone.prefix_ids() + backbone.tokenize(p) for p in PROMPTS[:2]]
    refs = [hf_greedy(backbone, r, 4) for r in rows]
    ids, mask, _ = left_pad(backbone, rows)
    assert backbone.generate(backbone.embed_ids(ids), mask, 4) == refs
    for r, ref in zip(rows, refs):  # one by one, no padding
        x = torch.tensor([r])
        assert backbone.generate(backbone.embed_ids(x), torch.ones_like(x), 4) == [ref]
    assert_unchanged(backbone, before)


def test_generate_stops_at_eos_and_strips_padding(backbone):
    rows = [backbone.prefix_ids() + backbone.tokenize(p) for p in PROMPTS[:2]]
    ids, mask, _ = left_pad(backbone, rows)
    embeds = backbone.embed_ids(ids)
    full = backbone.generate(embeds, mask, 5)
    assert [len(g) for g in full] == [5, 5]
    stop = full[0][1]  # make the first row's 2nd token an EOS
    eos = backbone.eos_token_ids
    try:
        backbone.eos_token_ids = (stop,)
        cut = backbone.generate(embeds, mask, 5)
    finally:
        backbone.eos_token_ids = eos
    first = full[0].index(stop)
    assert cut[0] == full[0][: first + 1]
    second = full[1].index(stop) + 1 if stop in full[1] else 5
    assert cut[1] == full[1][:second]
    assert backbone.generate(embeds, mask, 0) == [[], []]


def test_errors_name_the_numbers(backbone):
    x = torch.tensor([backbone.tokenize(PROMPTS[0])])
    with pytest.raises(InvalidInputError, match=r"exceed .* by 1\b"):
        backbone.generate(backbone.embed_ids(x), torch.ones_like(x), 513 - x.shape[1])
    with pytest.raises(InvalidInputError, match=r"\(batch, seq, 32\)"):
        backbone(torch.zeros(1, 3, 16), torch.ones(1, 3), torch.arange(3)[None])
    with pytest.raises(InvalidInputError, match="outside"):
        backbone.embed_ids(torch.tensor([[backbone.vocab_rows + 50]]))


# -- special tokens -----------------------------------------------------------------
def test_add_special_tokens_leaves_model_untouched():
    b = tiny_backbone("llama")
    before = snapshot(b.model)
    ids = b.add_special_tokens(["<image>", "<image_start>", "<image_end>"])
    assert sorted(ids.values()) == [b.vocab_rows, b.vocab_rows + 1, b.vocab_rows + 2]
    assert b.add_special_tokens(["<image>"]) == {"<image>": ids["<image>"]}  # idempotent
    text = "look <image_start><image><image_end> here"
    tokens = b.tokenize(text)
    assert [t for t in tokens if t >= b.vocab_rows] == [ids["<image_start>"], ids["<image>"], ids["<image_end>"]]
    assert b.decode(tokens) == "look  here"  # special tokens skipped
    with pytest.raises(InvalidInputError, match="add_special_tokens"):
        b.embed_ids(torch.tensor([[ids["<image_start>"]]]))
    b.add_special_tokens(["<image_start>", "<image_end>"], init="mean")
    mean = b.model.get_input_embeddings().weight.mean(0)
    out = b.embed_ids(torch.tensor([[5, ids["<image_start>"], ids["<image_end>"]]]))  # (1, 3, hidden)
    assert torch.allclose(out[0, 1], mean) and torch.allclose(out[0, 2], mean)
    assert torch.equal(out[0, 0], b.model.get_input_embeddings().weight[5])
    assert_unchanged(b.model, before)
    assert b.vocab_rows == 384


# -- loading --------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    b = tiny_backbone("qwen2", seed=3)
    b.add_special_tokens(["<audio_start>"], init="zeros")
    before = snapshot(b.model)
    out = b.save_pretrained(tmp_path / "lm")
    assert_unchanged(b.model, before)
    assert (out / "model.safetensors").is_file() and (out / "hub_extra_embeddings.safetensors").is_file()
    assert not list(out.glob("*.bin"))
    assert hub.default_registry().backbone_spec("transformers").detect(str(out))
    loaded = hub.default_registry().backbone_spec("transformers").factory(str(out))
    assert loaded.prefix_ids() == b.prefix_ids() and loaded.token_id("<audio_start>") == b.token_id("<audio_start>")
    x = torch.tensor([b.prefix_ids() + b.tokenize(PROMPTS[0]) + [b.token_id("<audio_start>")]])
    with torch.no_grad():
        args = (torch.ones_like(x), torch.arange(x.shape[1])[None])
        assert torch.equal(loaded(loaded.embed_ids(x), *args), b(b.embed_ids(x), *args))
    half = HFBackbone.from_pretrained(out, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert half(half.embed_ids(x), *args).dtype == torch.float32
    with pytest.raises(InvalidOptionsError, match="dtype"):
        HFBackbone.from_pretrained(out, dtype="int8")


def test_missing_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="not available locally"):
        HFBackbone.from_pretrained("modality-hub-tests/no-such-model")
    b = tiny_backbone("gpt2")
    out = b.save_pretrained(tmp_path / "lm")
    (out / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="safetensors"):
        HFBackbone.from_pretrained(out)
