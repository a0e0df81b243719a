"""Importers prove the composition exact: LLaVA and Qwen2-Audio checkpoints vs transformers' own forward.

Tiny random checkpoints are built here, saved with their processors, imported
as encoder + projector + backbone, and the composed logits are compared with
the transformers model's logits on the same inputs (left-padded batches, 1 and
2 items per prompt): max abs difference <= 1e-4 in float32 at real positions.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("hub_transformers")
pytest.importorskip("hub_image")
pytest.importorskip("hub_audio")

from PIL import Image  # noqa: E402

from hub.errors import InvalidInputError, InvalidOptionsError  # noqa: E402
from hub_transformers import tiny_tokenizer  # noqa: E402
from hub_transformers.importers import (  # noqa: E402
    IMPORTERS,
    Qwen2AudioTowerEncoder,
    from_llava,
    from_qwen2_audio,
    from_transformers,
)

TOL = 1e-4
RATE = 16000


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _clip(seed: int, samples: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"array": (0.1 * rng.standard_normal(samples)).astype(np.float32), "sampling_rate": RATE}


def _max_diff(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    real = mask.bool()
    return float((ours[real] - ref[real]).abs().max())


def _hf_ids(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """The composition's ids with each modality position (-1) set to the model's placeholder id."""
    return torch.where(input_ids == -1, torch.full_like(input_ids, token_id), input_ids)


# -- LLaVA ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    tok = tiny_tokenizer(add_bos=True)
    tok.add_special_tokens({"extra_special_tokens": ["<image>"]})
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vision = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2)
    text = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                                      image_seq_length=16)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # random-init biases are zero: make them count
        for p in model.model.multi_modal_projector.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("llava")
    model.save_pretrained(path)
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    images = processor_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                                vision_feature_select_strategy="default").save_pretrained(path)
    return path


def test_llava_logits_match_transformers(llava_dir):
    lm = from_transformers(llava_dir)
    assert set(lm.plugged) == {"image"} and lm.plugged["image"]["projector"] == "mlp"
    ref = transformers.LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(llava_dir)
    token_id = ref.config.image_token_id

    imgs = [_image(0, (40, 48)), _image(1, (32, 32)), _image(2, (50, 36)), _image(3, (64, 40))]
    prompts = [
        ["USER: ", imgs[0], "\nWhat is in the picture? ASSISTANT:"],
        ["USER: ", imgs[1], " and ", imgs[2], " compare them. ASSISTANT:"],
        "<image> A cat?",
    ]
    comp = lm.compose(prompts, images=[imgs[3]])
    per_image = (32 // 8) ** 2  # 'default' strategy: the CLS token is dropped
    assert [int((row == -1).sum()) for row in comp.input_ids] == [per_image, 2 * per_image, per_image]
    assert [[s[0] for s in row] for row in comp.spans] == [["image"], ["image", "image"], ["image"]]
    assert len(set(comp.lengths)) == 3 and bool((comp.attention_mask == 0).any())  # left padding in play

    ours = lm.forward_batch(prompts, images=[imgs[3]])
    pixel_values = processor(images=imgs, return_tensors="pt")["pixel_values"]  # row-major item order
    with torch.no_grad():
        theirs = ref(input_ids=_hf_ids(comp.input_ids, token_id), pixel_values=pixel_values,
                     attention_mask=comp.attention_mask, position_ids=comp.position_ids).logits.float()
    diff = _max_diff(ours, theirs, comp.attention_mask)
    print(f"\nLLaVA: max |logit difference| vs LlavaForConditionalGeneration, batch of 3: {diff:.3g}")
    assert diff <= TOL

    # one prompt alone (no padding), two images
    single = lm.compose([prompts[1]])
    ours = lm.forward(prompts[1])
    with torch.no_grad():
        theirs = ref(input_ids=_hf_ids(single.input_ids, token_id),
                     pixel_values=processor(images=imgs[1:3], return_tensors="pt")["pixel_values"],
                     attention_mask=single.attention_mask, position_ids=single.position_ids).logits.float()
    diff = _max_diff(ours, theirs, single.attention_mask)
    print(f"LLaVA: max |logit difference|, one prompt with 2 images: {diff:.3g}")
    assert diff <= TOL


def test_llava_parts_equal_the_checkpoint_parts(llava_dir):
    ref = transformers.LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    lm = from_llava(llava_dir)
    plug = lm._plugged["image"]
    assert plug.encoder.feature_layer == -2 and plug.encoder.cls_token == "drop"
    theirs = ref.model.multi_modal_projector.state_dict()
    ours = plug.projector.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    head = lm.backbone.model.lm_head.weight
    assert torch.equal(head, ref.lm_head.weight)
    # the image features alone: vision tower + projector == get_image_features
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        te = plug.encoder(pixel_values=pixel_values)
        out, _ = plug.projector(te.tokens, te.mask)
        feats = ref.get_image_features(pixel_values=pixel_values, vision_feature_layer=-2,
                                       vision_feature_select_strategy="default").pooler_output
    assert float((out - torch.stack(list(feats))).abs().max()) <= 1e-5


def test_llava_needs_the_image_plugin(llava_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "hub_image", None)
    with pytest.raises(InvalidOptionsError, match="pip install modality-hub-image"):
        from_llava(llava_dir)


def test_llava_model_object_needs_its_processor(llava_dir):
    ref = transformers.LlavaForConditionalGeneration.from_pretrained(llava_dir)
    with pytest.raises(InvalidOptionsError, match="without its tokenizer"):
        from_llava(ref, image_processor=transformers.AutoImageProcessor.from_pretrained(llava_dir))


# -- Qwen2-Audio -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen2_audio_dir(tmp_path_factory):
    tok = tiny_tokenizer(add_bos=False)
    tok.add_special_tokens({"extra_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]})
    audio = transformers.Qwen2AudioEncoderConfig(num_mel_bins=80, d_model=32, encoder_layers=2,
                                                 encoder_attention_heads=2, encoder_ffn_dim=64,
                                                 max_source_positions=100)
    text = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = transformers.Qwen2AudioConfig(audio_config=audio, text_config=text,
                                           audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"))
    torch.manual_seed(1)
    model = transformers.Qwen2AudioForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("qwen2_audio")
    model.save_pretrained(path)
    # 100 positions x conv stride 2 = 200 mel frames = a 2 s window at 16 kHz
    features = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=RATE, chunk_length=2)
    transformers.Qwen2AudioProcessor(feature_extractor=features, tokenizer=tok).save_pretrained(path)
    return path


def test_qwen2_audio_logits_match_transformers(qwen2_audio_dir):
    lm = from_transformers(qwen2_audio_dir)
    plug = lm._plugged["audio"]
    assert isinstance(plug.encoder, Qwen2AudioTowerEncoder) and plug.projector.kind == "linear"
    assert (plug.start, plug.end) == ("<|audio_bos|>", "<|audio_eos|>")
    ref = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(qwen2_audio_dir).eval()
    features = transformers.WhisperFeatureExtractor.from_pretrained(qwen2_audio_dir)
    token_id = ref.config.audio_token_id

    clips = [_clip(0, 8000), _clip(1, 20800), _clip(2, 32000), _clip(3, 4321)]  # 0.5 s, 1.3 s, full 2 s, odd
    prompts = [
        ["Listen: ", clips[0], " What is it?"],
        ["Compare ", clips[1], " with ", clips[2], "."],
        "<|AUDIO|>Caption:",
    ]
    comp = lm.compose(prompts, audio=[clips[3]])
    order = [clips[0], clips[1], clips[2], clips[3]]  # row-major order of appearance
    inputs = features([c["array"] for c in order], sampling_rate=RATE, return_attention_mask=True,
                      padding="max_length", return_tensors="pt")
    mel = inputs["attention_mask"].sum(-1).tolist()
    expected = [(((n - 1) // 2 + 1) - 2) // 2 + 1 for n in mel]  # Qwen2AudioProcessor's count
    assert expected[2] == 50  # a full window: max_source_positions / 2
    assert [int((row == -1).sum()) for row in comp.input_ids] == [expected[0], expected[1] + expected[2], expected[3]]
    bos, eos = (lm.backbone.token_id(t) for t in ("<|audio_bos|>", "<|audio_eos|>"))
    for row, spans in zip(comp.input_ids.tolist(), comp.spans):
        for _, start, end in spans:
            assert row[start - 1] == bos and row[end] == eos

    ours = lm.forward_batch(prompts, audio=[clips[3]])
    with torch.no_grad():
        theirs = ref(input_ids=_hf_ids(comp.input_ids, token_id), input_features=inputs["input_features"],
                     feature_attention_mask=inputs["attention_mask"], attention_mask=comp.attention_mask,
                     position_ids=comp.position_ids).logits.float()
    diff = _max_diff(ours, theirs, comp.attention_mask)
    print(f"\nQwen2-Audio: max |logit difference| vs Qwen2AudioForConditionalGeneration, batch of 3: {diff:.3g}")
    assert diff <= TOL


def test_qwen2_audio_encoder_round_trips(qwen2_audio_dir, tmp_path):
    encoder = from_qwen2_audio(qwen2_audio_dir)._plugged["audio"].encoder
    encoder.save_pretrained(tmp_path)
    again = Qwen2AudioTowerEncoder.from_pretrained(tmp_path)
    clips = [_clip(5, 12000), _clip(6, 3000)]
    a, b = encoder.encode(clips), again.encode(clips)
    # 12000 samples: 75 mel frames -> 38 -> 19 tokens; 3000 samples: 19 mel frames -> 10 -> 5 tokens
    assert a.lengths.tolist() == [encoder.count_tokens(c) for c in clips] == [19, 5]
    assert torch.equal(a.mask, b.mask) and torch.equal(a.tokens, b.tokens)


def test_qwen2_audio_refuses_clips_longer_than_the_window(qwen2_audio_dir):
    lm = from_qwen2_audio(qwen2_audio_dir)
    with pytest.raises(InvalidInputError, match=r"2\.50 s .* at most 2\.00 s"):
        lm.compose([["Hear ", _clip(0, 40000)]])


def test_qwen2_audio_needs_the_audio_plugin(qwen2_audio_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "hub_audio", None)
    with pytest.raises(InvalidOptionsError, match="pip install modality-hub-audio"):
        from_qwen2_audio(qwen2_audio_dir)


# -- dispatch ---------------------------------------------------------------------------------
def test_from_transformers_names_supported_types(tmp_path):
    transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(InvalidInputError, match="'llama'.*llava, qwen2_audio"):
        from_transformers(tmp_path)
    assert set(IMPORTERS) == {"llava", "qwen2_audio"}


@pytest.mark.parametrize("which", ["llava", "qwen2_audio"])
def test_convert_to_a_bundle_and_load_it_back(which, llava_dir, qwen2_audio_dir, tmp_path):
    """`mhub convert` writes a bundle (safetensors + manifest) that h.load() turns back into the same model."""
    from click.testing import CliRunner

    from hub import Hub
    from hub.cli import main

    src = llava_dir if which == "llava" else qwen2_audio_dir
    res = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "bundle")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    files = {p.suffix for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert ".safetensors" in files and not files & {".bin", ".pt", ".pkl"}
    h = Hub()
    original = h.from_transformers(str(src))
    loaded = h.load(tmp_path / "bundle")
    if which == "llava":
        prompt, items = "USER: <image>\nWhat is it?", {"images": [_image(1, (40, 30))]}
    else:
        prompt, items = "Listen <|AUDIO|> now", {"audio": [_clip(2, 12000)]}
    a, b = original.forward(prompt, **items), loaded.forward(prompt, **items)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
