"""The plugin registry: registration, validation, queries, the allow-list."""

import subprocess
import sys
import types

import pytest
import torch

from hub import (
    DuplicateNameError,
    Encoder,
    EncoderSpec,
    Hub,
    InvalidOptionsError,
    Modality,
    PluginError,
    Registry,
    UnknownEncoderError,
    UnknownModalityError,
    hookimpl,
)
from hub.testing import registered_plugin


class ConstEncoder(Encoder):
    """Every item (an int n) → n tokens of value n."""

    dim = 2

    def prepare(self, item, index=0):
        if not isinstance(item, int) or item < 1:
            raise self.invalid(index, item, "expected a positive int")
        return item

    def collate(self, prepared):
        n = max(prepared)
        mask = torch.tensor([[j < p for j in range(n)] for p in prepared])
        return {"values": torch.tensor(prepared, dtype=torch.float32), "mask": mask}

    def num_tokens(self, prepared):
        return prepared

    def forward(self, values, mask):
        tokens = values[:, None, None].expand(-1, mask.shape[1], self.dim).clone()
        return self.tokens(tokens * mask[..., None], mask)


def fake_plugin(modality="count", encoder="const", detect=lambda x: isinstance(x, int)):
    mod = types.ModuleType("plugin")

    @hookimpl
    def register_modalities(register):
        register(Modality(name=modality, accepts=("positive int",), default_encoder=encoder, detect=detect))

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name=encoder, modality=modality, factory=ConstEncoder))

    mod.register_modalities = register_modalities
    mod.register_encoders = register_encoders
    return mod


def test_in_process_plugin_registers_and_unregisters():
    reg = Registry(load_entry_points=False)
    with registered_plugin(fake_plugin(), name="fake", registry=reg) as info:
        assert info.modalities == ("count",) and info.encoders == ("const",)
        assert reg.list_modalities() == ["count"]
        te = Hub(reg).embed([3, 1])
        assert te.lengths.tolist() == [3, 1] and te.modality == "count"
    assert reg.list_modalities() == [] and reg.plugins() == []


class BytesEncoder(ConstEncoder):
    """A plugin that reads bytes only, as a third-party one may: an item of n bytes → n tokens."""

    def prepare(self, item, index=0):
        if not isinstance(item, bytes) or not item:
            raise self.invalid(index, item, "expected non-empty bytes")
        return len(item)


def test_a_memoryview_reaches_the_plugin_as_bytes(tmp_path):
    """Views (the dataset engine hands a binary column's values over as views of Arrow's buffer) reach detect and
    prepare as bytes, so a plugin written for bytes works unchanged, in Hub.embed and in embed_dataset."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from hub.datasets import embed_dataset, load

    mod = types.ModuleType("plugin")

    @hookimpl
    def register_modalities(register):
        register(Modality(name="blob", accepts=("bytes",), default_encoder="blob-len",
                          detect=lambda x: isinstance(x, bytes) and x[:2] == b"BL"))

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="blob-len", modality="blob", factory=BytesEncoder))

    mod.register_modalities, mod.register_encoders = register_modalities, register_encoders
    reg = Registry(load_entry_points=False)
    with registered_plugin(mod, name="blob", registry=reg):
        h = Hub(reg)
        data = memoryview(b"xxBLabcBLa")
        assert h.detect(data[2:7]) == "blob"
        assert h.embed([data[2:7], data[7:]]).lengths.tolist() == [5, 3]
        pq.write_table(pa.table({"id": ["a", "b", "c"], "item": pa.array([b"BLabcd", b"BL", None], pa.binary())}),
                       tmp_path / "b.parquet")
        s = embed_dataset(tmp_path / "b.parquet", tmp_path / "out", encoder="blob-len", hub=h, progress=False,
                          lance=False)
        (t,) = load(tmp_path / "out").values()
        rows = {r["id"]: r for r in t.to_pylist()}
        assert s.errors == 1 and rows["c"]["error"] is not None
        assert rows["a"]["embedding"] == [6.0, 6.0] and rows["b"]["embedding"] == [2.0, 2.0]


def test_duplicate_names_name_both_distributions():
    reg = Registry(load_entry_points=False)
    reg.register_plugin(fake_plugin(), name="first", distribution="dist-one", version="1.0")
    with pytest.raises(DuplicateNameError) as err:
        reg.register_plugin(fake_plugin(), name="second", distribution="dist-two", version="2.0")
    msg = str(err.value)
    assert "modality 'count'" in msg and "dist-one" in msg and "dist-two" in msg and "Uninstall" in msg
    # nothing of the failed plugin was kept, and it is listed with its error
    failed = {p.name: p for p in reg.plugins()}["second"]
    assert not failed.ok and "dist-one" in failed.error
    assert reg.list_encoders() == ["const"]


def test_duplicate_encoder_is_refused_even_for_another_modality():
    reg = Registry(load_entry_points=False)
    reg.register_plugin(fake_plugin(), name="a")
    with pytest.raises(DuplicateNameError, match="encoder 'const'"):
        reg.register_plugin(fake_plugin(modality="other"), name="b")
    assert reg.list_modalities() == ["count"]  # 'other' was not half-registered


def test_plugin_raising_in_a_hook_is_recorded_not_fatal():
    bad = types.ModuleType("plugin")

    @hookimpl
    def register_modalities(register):
        raise ZeroDivisionError("boom")

    bad.register_modalities = register_modalities
    reg = Registry(load_entry_points=False)
    info = reg.register_plugin(bad, name="bad", raise_errors=False)
    assert not info.ok and "ZeroDivisionError: boom" in info.error
    reg.register_plugin(fake_plugin(), name="good")
    assert reg.list_modalities() == ["count"]


def test_wrong_spec_type_and_bad_names():
    wrong = types.ModuleType("plugin")

    @hookimpl
    def register_modalities(register):
        register("text")

    wrong.register_modalities = register_modalities
    reg = Registry(load_entry_points=False)
    with pytest.raises(PluginError, match="expected hub.Modality"):
        reg.register_plugin(wrong, name="wrong")
    with pytest.raises(PluginError, match="invalid encoder name"):
        EncoderSpec(name="Bad Name", modality="x", factory=ConstEncoder)


def test_hookimpl_with_unknown_argument_is_a_plugin_error():
    odd = types.ModuleType("plugin")

    @hookimpl
    def register_modalities(register, extra):
        pass

    odd.register_modalities = register_modalities
    with pytest.raises(PluginError, match="not a valid plugin"):
        Registry(load_entry_points=False).register_plugin(odd, name="odd")


def test_queries_and_unknown_names():
    reg = Registry(load_entry_points=False)
    reg.register_plugin(fake_plugin(), name="p1")
    reg.register_plugin(fake_plugin(modality="count2", encoder="const-two"), name="p2")
    assert reg.list_encoders("const*") == ["const", "const-two"]
    assert reg.list_encoders(modality="count2") == ["const-two"]
    assert reg.list_encoders("*two") == ["const-two"]
    with pytest.raises(UnknownEncoderError, match="Did you mean 'const'"):
        reg.encoder_spec("cosnt")
    with pytest.raises(UnknownModalityError, match="Installed: count, count2"):
        reg.modality("audio")
    with pytest.raises(InvalidOptionsError, match="takes no options"):
        reg.create_encoder("const", size=3)


def test_options_are_validated_with_pydantic(hub):
    with pytest.raises(InvalidOptionsError, match="max_length"):
        hub.encoder("tiny-bert", max_length="long")
    with pytest.raises(InvalidOptionsError, match="colour: Extra inputs"):
        hub.encoder("tiny-bert", colour="red")


def test_allow_list_environment_variable():
    code = "from hub import Hub; print(','.join(Hub().modalities()))"
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**__import__("os").environ, **env},
    ).stdout.strip()
    assert run({"MODALITY_HUB_PLUGINS": "text"}) == "text"
    assert run({"MODALITY_HUB_PLUGINS": "modality-hub-image"}) == "image"  # distribution names work too
    assert run({"MODALITY_HUB_PLUGINS": ""}) == ""
    everything = run({})
    assert "image" in everything.split(",") and "text" in everything.split(",")


def test_augmentations_register_per_modality_and_apply_seeded():
    from hub import AugmentationSpec

    def aug_plugin(modality):
        plugin = types.ModuleType(f"aug_{modality}")

        @hookimpl
        def register_augmentations(register):
            register(AugmentationSpec(name="plus", modality=modality, fn=lambda x, rng, by=1: x + by + int(rng.integers(0, 2))))

        plugin.register_augmentations = register_augmentations
        return plugin

    reg = Registry(load_entry_points=False)
    reg.register_plugin(fake_plugin(), name="base")
    reg.register_plugin(aug_plugin("count"), name="a")
    reg.register_plugin(aug_plugin("other"), name="b")  # same name, another modality: fine
    assert reg.list_augmentations() == ["count/plus", "other/plus"]
    assert reg.list_augmentations("count") == ["count/plus"]
    with pytest.raises(DuplicateNameError, match="augmentation 'count/plus' is registered twice"):
        reg.register_plugin(aug_plugin("count"), name="c")
    h = Hub(reg)
    assert h.augment(3, "plus", seed=1) == h.augment(3, "plus", seed=1)
    assert h.augment(3, ["plus", "plus"], seed=0) >= 5
    with pytest.raises(UnknownEncoderError, match="count augmentation 'minus'"):
        h.augment(3, "minus")
