"""Serving an export with ONNX Runtime: :class:`OnnxEncoder`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._registry import Registry, resolve_registry
from ..errors import BundleError, InvalidInputError, ProviderError
from ..tokens import Pooling, TokenEmbeddings
from .manifest import _NUMPY, _TORCH, MODEL_NAME, WEIGHT_HASHES, Device, file_sha256, load_manifest
from .parity import as_feed, feed_keys
from .processor import load_processor

__all__ = ["OnnxEncoder"]


def _cuda_device_id(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def _cuda_missing() -> str | None:
    """Why this onnxruntime cannot offer CUDA, or ``None`` when its CUDA provider is installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return None
    return (f"this onnxruntime ({ort.__version__}, build {ort.get_device()}) has no CUDAExecutionProvider "
            f"(it offers {', '.join(available)}); install onnxruntime-gpu in place of onnxruntime "
            "(pip install 'modality-hub[gpu]'; the two packages cannot be installed together)")


class OnnxEncoder:
    """Serve an exported encoder with ONNX Runtime: same items in, same :class:`TokenEmbeddings` out.

    ``device``: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` (CUDA when its provider
    loads, else CPU).  ``providers`` lists what the session really uses.  Asking for CUDA
    when the CUDA provider is missing or fails to load raises :class:`ProviderError`
    with the reason, unless ``allow_cpu_fallback=True`` (then it warns and runs on CPU).
    The manifest's file hashes are checked first: a tampered or mismatched ``model.onnx``
    raises :class:`BundleError`.

    Preprocessing (``prepare``/``collate``) comes from the plugin's processor alone
    (:mod:`hub.onnx.processor`): rebuilt from the files the export carries under
    ``processor/`` (tokenizer, preprocessor config) or from the registry by encoder name and
    options.  The torch weights are never loaded.
    With ``pooled`` exports ``encode`` returns one token per item (the pooled vector,
    mask all true), so ``.pooled()`` gives the same vectors as the PyTorch encoder.
    On CUDA, inputs and outputs stay on the GPU through IO binding.  ``session_options``
    (an ``onnxruntime.SessionOptions``) sets threads and graph optimisation.
    """

    def __init__(self, directory: str | os.PathLike, device: Device | str = "cpu", *, allow_cpu_fallback: bool = False,
                 hub: Any = None, session_options: Any = None, registry: Registry | None = None) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self._counter: Any = None
        self._verify_files()
        if not (device in ("cpu", "cuda", "auto") or str(device).startswith("cuda:")):
            raise InvalidInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}")
        self._options = session_options  # an onnxruntime.SessionOptions (threads, graph optimisation level), or None
        self.session, self.providers = self._session(str(device), allow_cpu_fallback, ort)
        on_cuda = "CUDAExecutionProvider" in self.providers
        self._device_id = _cuda_device_id(str(device)) if on_cuda else 0
        self.device = torch.device("cuda", self._device_id) if on_cuda else torch.device("cpu")
        m = self.manifest
        self.registry = resolve_registry(registry, hub)
        self._encoder = load_processor(m.preprocess, self.directory, self.registry)  # weights-free half only
        self.modality = m.modality
        self.space = m.space
        self.pooling: Pooling = m.pooling
        self.name = m.encoder
        self.dim = int(m.outputs[0].shape[-1])
        self._out_names = [o.name for o in m.outputs]

    def __repr__(self) -> str:
        return (f"OnnxEncoder({str(self.directory)!r}, modality={self.modality!r}, encoder={self.name!r}, "
                f"dtype={self.manifest.dtype!r}, providers={self.providers})")

    # -- loading ---------------------------------------------------------------------------
    def _verify_files(self) -> None:
        for file, expected in self.manifest.hashes.items():
            if file in WEIGHT_HASHES:
                continue
            path = self.directory / file
            if not path.is_file():
                raise BundleError(f"{str(path)!r} is missing; the export manifest lists it (re-export the model)")
            actual = file_sha256(path)
            if actual != expected:
                raise BundleError(
                    f"{str(path)!r} does not match its export manifest (sha256 {actual[:16]}… != "
                    f"{expected[:16]}…): the file was modified or belongs to another export. Refusing to load it; "
                    "re-export the model"
                )

    def _session(self, device: str, allow_cpu_fallback: bool, ort: Any) -> tuple[Any, list[str]]:
        model = str(self.directory / MODEL_NAME)
        cpu = ["CPUExecutionProvider"]
        if device == "cpu":
            session = ort.InferenceSession(model, self._options, providers=cpu)
            return session, list(session.get_providers())
        reason = _cuda_missing()
        session = None
        if reason is None:
            if hasattr(ort, "preload_dlls"):  # CUDA / cuDNN from the nvidia-* wheels, when present
                try:
                    ort.preload_dlls()
                except Exception:  # noqa: BLE001 - the session below says whether CUDA loaded
                    pass
            try:
                session = ort.InferenceSession(
                    model, self._options, providers=[("CUDAExecutionProvider", {"device_id": _cuda_device_id(device)}), *cpu]
                )
            except Exception as exc:  # noqa: BLE001
                reason = f"creating a CUDA session failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            else:
                if "CUDAExecutionProvider" not in session.get_providers():
                    reason = ("CUDAExecutionProvider is installed but failed to load (onnxruntime logged why: "
                              "usually missing CUDA / cuDNN libraries of the versions this onnxruntime-gpu was "
                              "built for, or no visible GPU)")
        if reason is None:
            return session, list(session.get_providers())
        if device.startswith("cuda") and not allow_cpu_fallback:
            raise ProviderError(f"device={device!r} needs ONNX Runtime's CUDAExecutionProvider, but {reason}. "
                                "Pass allow_cpu_fallback=True (or device='auto') to run on CPU instead")
        if device.startswith("cuda"):
            warnings.warn(f"running on CPUExecutionProvider: {reason}", RuntimeWarning, stacklevel=3)
        session = ort.InferenceSession(model, self._options, providers=cpu)
        return session, list(session.get_providers())

    # -- preprocessing (the plugin's) --------------------------------------------------------
    def prepare(self, item: Any, index: int = 0) -> Any:
        return self._encoder.prepare(item, index)

    def collate(self, prepared: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self._encoder.collate(prepared)

    def num_tokens(self, prepared: Any) -> int:
        n = int(self._encoder.num_tokens(prepared))
        if self.manifest.pooled:
            return 1
        if self.manifest.projector is not None:
            if self._counter is None:  # built once: only its num_tokens() is used
                from ..lm import Projector

                self._counter = Projector.from_config(self.manifest.projector, self.registry)
            return int(self._counter.num_tokens(n))
        return n

    def length(self, prepared: Any) -> int:
        return int(self._encoder.length(prepared))

    # -- running ---------------------------------------------------------------------------
    def run(self, **tensors: torch.Tensor) -> TokenEmbeddings:
        """The graph on collate tensors → :class:`TokenEmbeddings` (numpy feeds on CPU, IO binding on CUDA)."""
        if self.device.type == "cuda":
            outs = self._run_bound(tensors, "cuda", self._device_id)
        else:
            outs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(self._out_names, as_feed(tensors, self.manifest.inputs))]
        return self._wrap(outs)

    __call__ = run

    def encode(self, items: Sequence[Any]) -> TokenEmbeddings:
        """``run(**collate([prepare(x) ...]))``."""
        if not items:
            raise InvalidInputError(f"{self.name} (onnx): encode() got no items")
        return self.run(**self.collate([self.prepare(x, i) for i, x in enumerate(items)]))

    def _wrap(self, outs: Sequence[torch.Tensor]) -> TokenEmbeddings:
        if self.manifest.pooled:
            vectors = outs[0].float()  # (batch, dim)
            mask = torch.ones(vectors.shape[0], 1, dtype=torch.bool, device=vectors.device)
            return TokenEmbeddings(vectors.unsqueeze(1), mask, self.modality, self.space, self.pooling)
        return TokenEmbeddings(outs[0].float(), outs[1].bool(), self.modality, self.space, self.pooling)

    def _run_bound(self, tensors: dict[str, torch.Tensor], device_type: str, device_id: int) -> list[torch.Tensor]:
        """Run with IO binding: inputs bound from torch tensors on ``device_type`` (no host copy),
        outputs allocated by ONNX Runtime on the device and handed to torch through DLPack."""
        device = torch.device(device_type, device_id) if device_type == "cuda" else torch.device("cpu")
        binding = self.session.io_binding()
        keep = []
        for spec, key in feed_keys(list(tensors), self.manifest.inputs):  # graph input ← collate key
            t = tensors[key].to(device=device, dtype=_TORCH[spec.dtype]).contiguous()
            keep.append(t)
            binding.bind_input(spec.name, device_type, device_id, _NUMPY[spec.dtype], tuple(t.shape), t.data_ptr())
        for spec in self.manifest.outputs:
            binding.bind_output(spec.name, device_type, device_id)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # inputs written by torch before ORT reads them
        self.session.run_with_iobinding(binding)
        outs = []
        for spec, value in zip(self.manifest.outputs, binding.get_outputs()):
            try:
                t = torch.utils.dlpack.from_dlpack(value._ortvalue.to_dlpack())
            except Exception:  # noqa: BLE001 - builds without DLPack export: copy through the host
                t = torch.from_numpy(value.numpy()).to(device)
            outs.append(t.bool() if spec.dtype == "bool" else t)
        del keep
        return outs
