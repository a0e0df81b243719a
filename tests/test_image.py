"""Image plugin: item types, token counts, feature layers, loading, bad inputs, conformance."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hub import InvalidInputError, InvalidOptionsError, UnknownModalityError, WeightsNotFoundError
from hub.testing import EncoderConformance
from hub_image._items import sample_image


def _rgb(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("BMP", ".bmp"), ("GIF", ".gif"), ("TIFF", ".tif")])
def test_files_and_bytes_of_each_format(hub, tmp_path, fmt, suffix):
    img = _rgb()
    path = tmp_path / f"img{suffix}"
    img.save(path, format=fmt)
    te = hub.embed([path, str(path), path.read_bytes()], encoder="tiny-clip")
    assert te.lengths.tolist() == [17, 17, 17]
    assert torch.allclose(te.tokens[0], te.tokens[2], atol=1e-6)  # path and bytes agree
    assert hub.detect(path.read_bytes()) == "image"


def test_gif_uses_first_frame(hub, tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    from_gif = hub.embed(path, encoder="tiny-clip")
    first = hub.embed(Image.open(path).convert("RGB"), encoder="tiny-clip")
    assert torch.allclose(from_gif.tokens, first.tokens, atol=1e-5)


def test_in_memory_types_agree(hub):
    arr = np.array(_rgb())
    pil = Image.fromarray(arr)
    chw = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
    te = hub.embed([pil, arr, chw], encoder="tiny-vit")
    assert torch.allclose(te.tokens[0], te.tokens[1]) and torch.allclose(te.tokens[0], te.tokens[2], atol=1e-5)


def test_modes_are_converted(hub):
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent → white
    white = Image.new("RGB", (20, 20), (255, 255, 255))
    te = hub.embed([rgba, white, Image.new("L", (20, 20), 128), Image.new("P", (20, 20)),
                    np.full((20, 20), 7, np.uint8), np.zeros((20, 20, 1), np.uint8)], encoder="tiny-clip")
    assert torch.allclose(te.tokens[0], te.tokens[1], atol=1e-6)
    assert len(te) == 6


@pytest.mark.parametrize("family,tokens", [("clip", 17), ("siglip", 16), ("vit", 17), ("dinov2", 17)])
def test_tokens_per_image_are_exact(hub, family, tokens):
    enc = hub.encoder(f"tiny-{family}")
    assert enc.count_tokens(_rgb(50, 20)) == tokens
    assert hub.embed(_rgb(50, 20), encoder=f"tiny-{family}").lengths.tolist() == [tokens]


def test_feature_layer_and_cls_handling(hub):
    llava = hub.encoder("tiny-clip", feature_layer=-2, cls_token="drop")
    full = hub.encoder("tiny-clip", feature_layer=-2)
    img = _rgb()
    a, b = llava.encode([img]), full.encode([img])
    assert a.lengths.tolist() == [16] and b.lengths.tolist() == [17]
    assert torch.allclose(a.tokens[0], b.tokens[0, 1:])
    last = hub.encoder("tiny-clip").encode([img])
    assert not torch.allclose(last.tokens, b.tokens)  # layer -2 is not the final output
    with pytest.raises(InvalidOptionsError, match="feature_layer 9 out of range"):
        hub.encoder("tiny-clip", feature_layer=9)


def test_dinov2_registers_count_as_prefix_tokens(hub):
    from hub_image._encoder import HFVisionEncoder, _tiny_processor
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                    image_size=32, patch_size=8, num_register_tokens=4)
    enc = HFVisionEncoder(model=Dinov2WithRegistersModel(cfg), processor=_tiny_processor("dinov2", 32))
    assert enc.count_tokens(_rgb()) == 16 + 1 + 4 == enc.encode([_rgb()]).lengths.item()
    drop = HFVisionEncoder(model=enc.model, processor=enc.processor, cls_token="drop")
    assert drop.encode([_rgb()]).lengths.item() == 16


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_save_and_load_a_local_directory(hub, tmp_path, family):
    tiny = hub.encoder(f"tiny-{family}")
    tiny.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").is_file()
    loaded = hub.encoder("hf-vision", weights=str(tmp_path))
    assert loaded.family == family
    img = sample_image()
    assert torch.allclose(tiny.encode([img]).tokens, loaded.encode([img]).tokens, atol=1e-6)


def test_missing_weights_do_not_download(hub):
    with pytest.raises(WeightsNotFoundError, match="openai/clip-vit-base-patch32.*tiny-clip"):
        hub.encoder("clip-vit-b32")


def test_bad_inputs_name_the_item(hub, tmp_path):
    png = io.BytesIO()
    _rgb().save(png, format="PNG")
    truncated = png.getvalue()[:60]
    cases = [
        (truncated, "not a readable image"),
        (b"", "empty bytes"),
        (Image.new("RGB", (0, 0)), "0x0"),
        (np.zeros((0, 0, 3), np.uint8), "zero size"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 5), np.uint8), "HxW or HxWxC"),
        (torch.full((3, 8, 8), 2.0), r"\[0, 1\]"),
        (torch.full((3, 8, 8), float("nan")), "NaN"),
        ("a cat", "unsupported type"),
    ]
    for item, pattern in cases:
        with pytest.raises(InvalidInputError, match=pattern) as err:
            hub.embed([sample_image(), item], encoder="tiny-clip")
        assert "item 1" in str(err.value)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(InvalidInputError, match="corrupt.png.*not a readable image"):
        hub.embed(corrupt, encoder="tiny-clip")
    with pytest.raises(InvalidInputError, match="is a directory"):
        hub.embed(str(tmp_path) + "/", modality="image", encoder="tiny-clip")
    with pytest.raises(UnknownModalityError, match="garbage|bytes of length"):
        hub.embed(b"garbage bytes")


class TestImageConformance(EncoderConformance):
    @pytest.fixture(params=["tiny-clip", "tiny-siglip", "tiny-vit", "tiny-dinov2"])
    def encoder(self, request, hub):
        return hub.encoder(request.param)

    @pytest.fixture
    def items(self):
        return [sample_image(), _rgb(40, 30, 1), np.asarray(_rgb(13, 77, 2)), torch.rand(3, 24, 24)]

    @pytest.fixture
    def bad_items(self):
        return [b"not an image", Image.new("RGB", (0, 0)), np.zeros((2, 2), np.float64), None]
