"""Hub: detection, batching, ordering, error handling."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hub import (
    AmbiguousModalityError,
    Hub,
    InvalidInputError,
    Modality,
    UnknownModalityError,
    WeightsNotFoundError,
    hookimpl,
)
from hub.testing import registered_plugin


def test_modalities_and_encoders(hub):
    assert {"text", "image"} <= set(hub.modalities())
    assert "tiny-clip" in hub.encoders(modality="image")
    assert hub.encoders("tiny-*", modality="text") == ["tiny-bert"]


def test_detection_routes_by_type_and_file_suffix(hub, tmp_path):
    png = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(png)
    assert hub.detect("a cat") == "text"
    assert hub.detect(png) == "image"
    assert hub.detect(str(png)) == "image"  # a str naming an existing file is that file
    assert hub.detect(Image.new("RGB", (4, 4))) == "image"
    assert hub.detect(np.zeros((4, 4, 3), np.uint8)) == "image"
    assert hub.detect(png.read_bytes()) == "image"
    assert hub.detect("cat.png") == "text"  # not an existing file: just text


def test_unknown_items_list_what_each_modality_accepts(hub):
    with pytest.raises(UnknownModalityError) as err:
        hub.detect(object())
    msg = str(err.value)
    assert "builtins.object" in msg and "text:" in msg and "image:" in msg and "PIL.Image" in msg


def test_directory_and_missing_file_are_refused(hub, tmp_path):
    with pytest.raises(InvalidInputError, match="is a directory"):
        hub.embed(str(tmp_path))
    with pytest.raises(InvalidInputError, match="is a directory"):
        hub.embed(tmp_path, modality="image", encoder="tiny-clip")
    with pytest.raises(InvalidInputError, match="no such file"):
        hub.embed(tmp_path / "nope.png")
    with pytest.raises(UnknownModalityError, match=r"\.xyz1"):
        f = tmp_path / "data.xyz1"
        f.write_text("1 2 3")
        hub.embed(f)


def test_ambiguous_items_ask_for_modality():
    plugin = __import__("types").ModuleType("shout")

    @hookimpl
    def register_modalities(register):
        register(Modality(name="shout", accepts=("str",), default_encoder="tiny-bert", detect=lambda x: isinstance(x, str)))

    plugin.register_modalities = register_modalities
    h = Hub()
    with registered_plugin(plugin, name="shout", registry=h.registry):
        with pytest.raises(AmbiguousModalityError, match="shout, text|text, shout"):
            h.detect("hello")
    assert h.detect("hello") == "text"


def test_single_item_is_a_batch_of_one(hub):
    te = hub.embed("one sentence", encoder="tiny-bert")
    assert len(te) == 1 and te.modality == "text"


def test_bad_inputs_raise_typed_errors_naming_the_item(hub):
    with pytest.raises(InvalidInputError, match="empty list"):
        hub.embed([])
    with pytest.raises(InvalidInputError, match=r"item 1 \(str ''\): empty"):
        hub.embed(["fine", ""], encoder="tiny-bert")
    with pytest.raises(UnknownModalityError, match="item 0"):
        hub.embed([object()])
    with pytest.raises(InvalidInputError, match="on_error"):
        hub.embed(["x"], on_error="ignore")
    with pytest.raises(InvalidInputError, match="mix"):
        hub.embed(["text", Image.new("RGB", (4, 4))])


def test_skip_keeps_good_items_and_reports_bad_ones(hub):
    items = ["first", "", object(), "last one here"]
    te = hub.embed(items, encoder="tiny-bert", on_error="skip")
    assert te.indices == [0, 3]
    assert [(e.index, "empty" in e.reason) for e in te.errors] == [(1, True), (2, False)]
    alone = hub.embed(["first", "last one here"], encoder="tiny-bert")
    assert torch.allclose(te.tokens, alone.tokens) and torch.equal(te.mask, alone.mask)


def test_all_items_bad_with_skip_gives_empty_result(hub):
    te = hub.embed(["", "  "], encoder="tiny-bert", on_error="skip")
    assert len(te) == 0 and len(te.errors) == 2 and te.dim == 32


def test_bucketing_keeps_input_order_and_matches_singles(hub):
    texts = ["a " * n + "end" for n in (9, 1, 30, 4, 17, 2)]
    te = hub.embed(texts, encoder="tiny-bert", batch_size=2)
    assert te.indices == list(range(6))
    for i, t in enumerate(texts):
        single = hub.embed(t, encoder="tiny-bert")
        assert torch.allclose(te[i], single[0], atol=1e-5)
    # bucketing saved padding: batch of the two shortest is narrower than the longest
    assert te.lengths.tolist() == hub.count_tokens(texts, encoder="tiny-bert")


def test_progress_bar(hub, capsys):
    hub.embed(["a", "b", "c"], encoder="tiny-bert", batch_size=1, progress=True)
    assert "embed text (tiny-bert)" in capsys.readouterr().err
    hub.embed(["a", "b", "c"], encoder="tiny-bert", batch_size=1, progress=False)
    assert "embed text" not in capsys.readouterr().err


def test_missing_weights_error_says_how_to_provide_them(hub):
    with pytest.raises(WeightsNotFoundError) as err:
        hub.encoder("e5-small-v2")
    msg = str(err.value)
    assert "intfloat/e5-small-v2" in msg and "huggingface-cli download" in msg and "tiny-bert" in msg


def test_encoder_of_another_modality_is_refused(hub):
    with pytest.raises(InvalidInputError, match="encodes 'image', not 'text'"):
        hub.embed(["x"], modality="text", encoder="tiny-clip")


def test_encoders_are_cached_per_options(hub):
    assert hub.encoder("tiny-bert") is hub.encoder("tiny-bert")
    assert hub.encoder("tiny-bert", seed=1) is not hub.encoder("tiny-bert")


def test_device_placement():
    h = Hub(device="cpu")
    assert h.encoder("tiny-bert").device == torch.device("cpu")
