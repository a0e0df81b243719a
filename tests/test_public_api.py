import hub


def test_public_api_is_pinned():
    assert sorted(hub.__all__) == sorted([
        "AmbiguousModalityError", "AugmentationSpec", "Backbone", "BackboneSpec", "BundleError", "ContextLengthError",
        "DuplicateNameError", "Encoder", "EncoderSpec", "ExportError", "Hub", "HubError", "InvalidInputError",
        "InvalidOptionsError", "Modality", "ModalityNotPluggedError", "MultimodalLM", "PluginError",
        "PluginInfo", "Projector", "ProjectorConfig", "PromptError", "ProviderError", "Registry", "SkippedItem",
        "SpaceMismatchError", "TokenEmbeddings", "UnknownEncoderError", "UnknownModalityError",
        "WeightsNotFoundError", "__version__", "build_projector", "default_registry", "describe_item",
        "hookimpl",
    ])
    for name in hub.__all__:
        assert hasattr(hub, name), name


def test_errors_subclass_builtins():
    assert issubclass(hub.UnknownModalityError, KeyError)
    assert issubclass(hub.UnknownEncoderError, KeyError)
    assert issubclass(hub.InvalidInputError, ValueError)
    assert issubclass(hub.WeightsNotFoundError, FileNotFoundError)
    assert issubclass(hub.DuplicateNameError, hub.PluginError)
    assert all(issubclass(getattr(hub, n), hub.HubError) for n in hub.__all__ if n.endswith("Error"))
    assert str(hub.UnknownEncoderError("plain message")) == "plain message"  # KeyError would quote it


def test_importing_hub_loads_no_plugins():
    import subprocess
    import sys

    code = "import sys, hub; print(any(m.startswith('hub_') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
