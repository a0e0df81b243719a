"""Alignment: train a projector from a modality's encoder into a shared space.

``objective="infonce"`` (CLIP-style symmetric InfoNCE against a frozen anchor
encoder's pooled caption embeddings: one shared space with text as the anchor, as
ImageBind does with images) or ``"caption"`` (LLaVA stage one: next-token loss on
the caption through a frozen backbone, only the projector learns).  The result
saves as ``projector.json`` + ``projector.safetensors`` + ``align.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .._manifest import read_manifest
from .._registry import Registry, default_registry
from ..backbone import Backbone
from ..encoder import Encoder
from ..errors import BundleError, ContextLengthError, InvalidInputError, InvalidOptionsError
from ..lm import Composer, MultimodalLM, ProjectedEncoder, Projector, attach, build_projector
from ..augment import check_transforms
from ..tokens import TokenEmbeddings
from .heads import LogitScale
from .loop import forward, make_config, resolve_encoder, resolve_registry, resume_run, train_epochs
from .losses import clip_loss

__all__ = ["AlignConfig", "AlignManifest", "AlignResult", "ALIGN_MANIFEST", "ALIGN_FORMAT", "align", "aligned_encoder",
           "is_aligned_dir"]

ALIGN_MANIFEST = "align.json"
ALIGN_FORMAT = 2  # 2: align.json lists the sha256 of every file; format 1 loads with a warning
#: optional, beside align.json: the trained encoder's state dict, for encoders without ``save_pretrained``
ENCODER_STATE = "encoder-state.safetensors"


class AlignConfig(BaseModel):
    """What defines an alignment run (saved in ``state.json`` and ``align.json``)."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    objective: Literal["infonce", "caption"] = "infonce"
    encoder: str | None = None
    encoder_options: dict[str, Any] = {}
    anchor: str = "text"
    anchor_encoder: str | None = None
    anchor_options: dict[str, Any] = {}
    backbone: str | None = Field(None, description="caption: backbone source (hub id, directory or preset)")
    projector: str = "mlp"
    projector_options: dict[str, Any] = {}
    train_encoder: bool = False
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.07, gt=0, description="infonce: initial temperature (CLIP: 0.07)")
    learn_temperature: bool = Field(True, description="infonce: learn the logit scale (capped at 100, as CLIP)")
    seed: int = 0



class AlignManifest(BaseModel):
    """``align.json`` beside an aligned projector (``projector.json`` + ``projector.safetensors``)."""

    model_config = ConfigDict(extra="forbid")

    format: int = ALIGN_FORMAT
    kind: str = "aligned-projector"
    modality: str
    objective: Literal["infonce", "caption"]
    space: str = Field(description="the space the projector maps into")
    encoder: str = Field(description="registry name that rebuilds the encoder")
    encoder_options: dict[str, Any] = {}
    encoder_dir: str | None = Field(None, description="encoder weights saved beside (loaded as weights=...)")
    anchor: str
    anchor_encoder: str | None = None
    anchor_options: dict[str, Any] = {}
    backbone: str | None = None
    config: dict[str, Any] = {}
    transforms: list[dict[str, Any]] = Field(
        default_factory=list, description="registered augmentations of the modality run (seed 0) on every item "
        "before the encoder: the input normalisation the projector was trained with")
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file (relative path → hex)")


@dataclass
class AlignResult:
    """An aligned projector (and the encoder it reads), the loss of every step, and how to save it.

    ``save(dir)`` writes ``projector.json`` + ``projector.safetensors`` at the top
    of ``dir`` (so ``lm.plug(modality, encoder=..., projector=dir)`` takes it as
    is), ``align.json``, and the encoder under ``dir/encoder`` when it was trained
    or given as an instance.
    """

    modality: str
    objective: str
    encoder: Encoder
    projector: Projector
    config: AlignConfig
    losses: list[float]
    space: str
    anchor_encoder: Encoder | None = None
    backbone: Backbone | None = None
    encoder_name: str | None = None
    checkpoint: Path | None = None
    directory: Path | None = None
    epoch_losses: list[float] = field(default_factory=list)
    #: input transforms (``[{"name", "params"}]``, registered augmentations) the items went through before
    #: the encoder in training; saved in ``align.json``, applied by :func:`aligned_encoder`
    transforms: list[dict[str, Any]] = field(default_factory=list)

    @torch.no_grad()
    def embed_aligned(self, items: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Pooled, L2-normalized embeddings of ``items`` in the aligned space: (items, out_dim)."""
        self.encoder.eval()
        self.projector.eval()
        out = []
        for i in range(0, len(items), batch_size):
            te = forward(self.encoder, list(items[i : i + batch_size]))
            out.append(self.projector.project(te, self.space).pooled(normalize=True))
        return torch.cat(out)

    @torch.no_grad()
    def embed_anchor(self, texts: Sequence[Any]) -> torch.Tensor:
        """The anchor encoder's pooled, normalized embeddings (infonce only): (items, out_dim)."""
        if self.anchor_encoder is None:
            raise InvalidInputError(f"a {self.objective!r} alignment has no anchor encoder; its space is {self.space!r}")
        return self.anchor_encoder.encode(list(texts)).pooled(normalize=True)

    def save(self, directory: str | os.PathLike, registry: Registry | None = None) -> Path:
        """Write ``projector.json`` + ``projector.safetensors`` + ``align.json`` (+ ``encoder/``) atomically:
        staged beside ``directory`` and swapped in; other entries already there (a training ``checkpoint``)
        travel into the new version as hard links.  ``align.json`` (format 2) records every file's sha256."""
        from .._atomic import atomic_dir
        from .._manifest import hash_files

        registry = registry or default_registry()
        out = Path(directory)
        owned = {ALIGN_MANIFEST, "projector.json", "projector.safetensors", "encoder"}
        with atomic_dir(out, marker=ALIGN_MANIFEST, what="an aligned projector", keep=lambda n: n not in owned) as stage:
            self.projector.save(stage)
            enc_name, enc_options, enc_dir = self.encoder_name, dict(self.config.encoder_options), None
            if self.config.train_encoder or enc_name is None:
                reload_as = self.encoder.reload_as or self.encoder.name
                if not hasattr(self.encoder, "save_pretrained") or reload_as not in registry.list_encoders():
                    raise BundleError(
                        f"encoder {self.encoder.name!r} has no save_pretrained() reloadable by a registered encoder "
                        "(Encoder.reload_as); align it by registry name with train_encoder=False"
                    )
                self.encoder.save_pretrained(str(stage / "encoder"))
                enc_name, enc_options, enc_dir = reload_as, self.encoder.reload_options(), "encoder"
            anchor_name = getattr(self.anchor_encoder, "name", None) if self.anchor_encoder is not None else None
            manifest = AlignManifest(
                modality=self.modality, objective=self.config.objective, space=self.space, encoder=enc_name,
                encoder_options=enc_options, encoder_dir=enc_dir, anchor=self.config.anchor,
                anchor_encoder=anchor_name, anchor_options=dict(self.config.anchor_options),
                backbone=self.config.backbone, config=json.loads(self.config.model_dump_json()),
                transforms=[dict(t) for t in self.transforms], files=hash_files(stage),
            )
            (stage / ALIGN_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        self.directory = out
        return out

    @classmethod
    def read_manifest(cls, directory: str | os.PathLike) -> AlignManifest:
        """``align.json`` of ``directory``, checked before anything is built from it: an interrupted save is
        repaired or reported torn; format 2 hashes match; ``encoder_dir`` stays inside; options can only
        narrow permissions (:mod:`hub._manifest`).  Format 1 loads with a warning (no hashes)."""
        from .._atomic import recover
        from .._manifest import file_options, inside, verify_files

        root = Path(directory)
        recover(root, marker=ALIGN_MANIFEST, what="an aligned projector")
        manifest = read_manifest(root / ALIGN_MANIFEST, AlignManifest, "an aligned projector", ALIGN_FORMAT, legacy=(1,))
        where = str(root / ALIGN_MANIFEST)
        if manifest.format >= 2:
            if not manifest.files:
                raise BundleError(f"{where}: format {manifest.format} lists no file hashes; refused")
            verify_files(root, manifest.files, f"aligned projector {str(root)!r}")
        manifest.encoder_options = file_options(manifest.encoder_options, f"{where}: encoder_options")
        manifest.anchor_options = file_options(manifest.anchor_options, f"{where}: anchor_options")
        if manifest.encoder_dir is not None:
            inside(root, manifest.encoder_dir, f"{where}: encoder_dir")
        manifest.transforms = check_transforms(manifest.transforms, f"{where}: transforms")
        return manifest

    @classmethod
    def load(cls, directory: str | os.PathLike, registry: Registry | None = None, *, hub: Any = None) -> "AlignResult":
        """Reload a directory written by :meth:`save` (the backbone of a caption alignment is not loaded)."""
        from .._manifest import check_pretrained_dir, inside

        registry = resolve_registry(registry, hub)
        root = Path(directory)
        manifest = cls.read_manifest(root)
        hashes = manifest.files if manifest.format >= 2 else None
        if hashes is not None and not {"projector.json", "projector.safetensors"} <= set(hashes):
            raise BundleError(f"{str(root / ALIGN_MANIFEST)!r}: the projector files are not among the hashed files")
        options = dict(manifest.encoder_options)
        if manifest.encoder_dir:
            enc_path = inside(root, manifest.encoder_dir, f"{str(root / ALIGN_MANIFEST)!r}: encoder_dir")
            check_pretrained_dir(enc_path, root, f"aligned projector {str(root)!r}: the encoder", hashes)
            options["weights"] = str(enc_path)
        encoder = registry.create_encoder(manifest.encoder, **options).eval()
        anchor = None
        if manifest.anchor_encoder:
            anchor = registry.create_encoder(manifest.anchor_encoder, **manifest.anchor_options).eval()
        config = AlignConfig(**manifest.config)
        return cls(manifest.modality, manifest.objective, encoder, Projector.load(root, registry=registry), config, [], manifest.space,
                   anchor, None, manifest.encoder, directory=root, transforms=list(manifest.transforms))


def _pairs(pairs: Sequence[Any]) -> tuple[list[Any], list[str]]:
    items, captions = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[1], str) or not pair[1].strip():
            raise InvalidInputError(f"pair {i} must be (item, caption str) with a non-empty caption; got {type(pair).__name__}")
        items.append(pair[0])
        captions.append(pair[1])
    if len(items) < 2:
        raise InvalidInputError(f"align needs at least 2 pairs; got {len(items)}")
    return items, captions


class _Aligner:
    """One alignment objective: its target width and the loss of a batch of cached tokens."""

    space: str
    out_dim: int

    def loss(self, projected: TokenEmbeddings, batch: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        return {}


class _InfoNCE(_Aligner):
    def __init__(self, registry: Registry, config: AlignConfig, captions: list[str], anchor: str | Encoder | None) -> None:
        self.encoder, _ = resolve_encoder(registry, config.anchor, anchor, config.anchor_options)
        self.encoder.eval().requires_grad_(False)
        unique = sorted(set(captions))
        self.labels = torch.tensor([unique.index(c) for c in captions])  # (pairs,)
        with torch.no_grad():
            vecs = [self.encoder.encode(unique[i : i + 64]).pooled(normalize=True).clone() for i in range(0, len(unique), 64)]
        self.anchors = torch.cat(vecs)  # (captions, anchor_dim)
        self.out_dim = int(self.anchors.shape[-1])
        self.space = self.encoder.space
        self.scale = LogitScale(config.temperature)
        self.scale.value.requires_grad_(config.learn_temperature)

    def modules(self) -> dict[str, nn.Module]:
        return {"logit_scale": self.scale}

    def loss(self, projected: TokenEmbeddings, batch: list[int]) -> torch.Tensor:
        x = projected.pooled(normalize=True)  # (batch, anchor_dim)
        labels = self.labels[batch]
        rows, inverse = labels.unique(return_inverse=True)
        anchors = self.anchors[rows].to(x.device)  # (captions in batch, anchor_dim)
        return clip_loss(x, anchors, inverse.to(x.device), self.scale())


class _Caption(_Aligner):
    def __init__(self, registry: Registry, config: AlignConfig, captions: list[str], backbone: Any) -> None:
        if backbone is None:
            raise InvalidOptionsError("objective='caption' needs backbone= (a backbone source such as 'tiny-llama', "
                                      "a Backbone or a MultimodalLM)")
        if isinstance(backbone, MultimodalLM):
            backbone = backbone.backbone
        elif not isinstance(backbone, Backbone):
            backbone = attach(registry, str(backbone)).backbone
        self.backbone = backbone.eval()
        self.frozen = [(p, p.requires_grad) for p in backbone.parameters()]
        backbone.requires_grad_(False)
        eos = backbone.eos_token_id
        self.composer = Composer(backbone, registry)  # the same layout as inference
        self.ids = [backbone.tokenize(c) + ([int(eos)] if eos is not None else []) for c in captions]
        self.out_dim = int(backbone.hidden_size)
        self.space = backbone.space

    def restore(self) -> None:
        for p, flag in self.frozen:
            p.requires_grad_(flag)

    def loss(self, projected: TokenEmbeddings, batch: list[int]) -> torch.Tensor:
        """Next-token loss on each caption after its projected item, laid out by the inference composer
        (:meth:`hub.lm.Composer.compose_embedded`: the backbone's prefix, left padding, positions)."""
        bb = self.backbone
        dtype = next(iter(bb.parameters())).dtype
        rows = [[("embeds", projected[j].to(dtype=dtype)), ("target", self.ids[i])] for j, i in enumerate(batch)]
        try:
            comp = self.composer.compose_embedded(rows)
        except ContextLengthError as exc:
            raise ContextLengthError(f"a caption pair is too long: {exc}; use shorter captions or a pool / "
                                     "resampler projector") from None
        logits = bb(comp.inputs_embeds, comp.attention_mask, comp.position_ids)  # (batch, seq, vocab)
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           comp.labels[:, 1:].reshape(-1), ignore_index=-100)


def align(
    modality: str,
    pairs: Sequence[tuple[Any, str]],
    *,
    encoder: str | Encoder | None = None,
    anchor: str = "text",
    anchor_encoder: str | Encoder | None = None,
    anchor_options: dict[str, Any] | None = None,
    projector: str = "mlp",
    projector_options: dict[str, Any] | None = None,
    objective: str = "infonce",
    backbone: Any = None,
    train_encoder: bool = False,
    registry: Registry | None = None,
    hub: Any = None,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    temperature: float = 0.07,
    learn_temperature: bool = True,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    encoder_options: dict[str, Any] | None = None,
) -> AlignResult:
    """Train a ``projector`` from ``modality``'s encoder into a shared space on ``(item, caption)`` pairs.

    ``objective="infonce"``: the projected, pooled tokens meet the frozen anchor
    encoder's pooled embeddings of the captions (``anchor_encoder`` defaults to
    the anchor modality's default encoder), with CLIP's symmetric InfoNCE.
    ``objective="caption"``: LLaVA stage one — next-token loss on the caption
    after the projected item, through the frozen ``backbone``.  The encoder is
    frozen (its tokens computed once) unless ``train_encoder``.  With
    ``out_dir``: checkpoints every epoch (resumable) and the result saved there.  ``registry`` (or, as
    before, ``hub=``) supplies encoders, projector kinds and backbones.
    """
    registry = resolve_registry(registry, hub)
    items, captions = _pairs(pairs)
    registry.projector(projector)  # typed error naming the registered kinds
    enc, name = resolve_encoder(registry, modality, encoder, encoder_options)
    backbone_ref = backbone if isinstance(backbone, str) else None
    config = make_config(
        AlignConfig, modality=modality, objective=objective, encoder=name, encoder_options=dict(encoder_options or {}),
        anchor=anchor, anchor_encoder=anchor_encoder if isinstance(anchor_encoder, str) else None,
        anchor_options=dict(anchor_options or {}), backbone=backbone_ref, projector=projector,
        projector_options=dict(projector_options or {}), train_encoder=train_encoder, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, temperature=temperature,
        learn_temperature=learn_temperature, seed=seed,
    )
    aligners: dict[str, Callable[[], _Aligner]] = {
        "infonce": lambda: _InfoNCE(registry, config, captions, anchor_encoder),
        "caption": lambda: _Caption(registry, config, captions, backbone),
    }
    task = aligners[objective]()
    proj = build_projector(projector, enc.dim, task.out_dim, registry=registry,
                           **{"seed": seed, **config.projector_options}).to(enc.device)

    cached: list[torch.Tensor] | None = None
    if not train_encoder:
        enc.eval().requires_grad_(False)
        cached = []
        with torch.no_grad():
            for i in range(0, len(items), 64):
                te = forward(enc, items[i : i + 64])
                cached.extend(t.clone() for t in te)  # (n_i, dim) each
    else:
        enc.requires_grad_(True)

    modules: dict[str, nn.Module] = {"projector": proj, **task.modules()}
    if train_encoder:
        modules["encoder"] = enc
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    root, start, losses, epoch_losses, checkpoint = resume_run(out_dir, resume, modules, optimizer, config)

    def batch_tokens(batch: list[int]) -> TokenEmbeddings:
        if cached is None:
            return forward(enc, [items[i] for i in batch])
        return TokenEmbeddings.from_list([cached[i] for i in batch], modality=modality, space=enc.space, pooling=enc.pooling)

    try:
        checkpoint = train_epochs(
            lambda batch, rng, gen: task.loss(proj.project(batch_tokens(batch), task.space), batch),
            kind="align", what=f"align {modality} ({objective})", n_items=len(items), batch_size=batch_size,
            min_batch=2, start=start, epochs=epochs, seed=seed, lr=lr, train=[proj, enc] if train_encoder else [proj],
            optimizer=optimizer, root=root, modules=modules, config=config, losses=losses,
            epoch_losses=epoch_losses, progress=progress,
        ) or checkpoint
    finally:
        proj.eval()
        enc.eval()
        if isinstance(task, _Caption):
            task.restore()
    result = AlignResult(
        modality, objective, enc, proj, config, losses, task.space,
        anchor_encoder=getattr(task, "encoder", None), backbone=getattr(task, "backbone", None),
        encoder_name=name, checkpoint=checkpoint, epoch_losses=epoch_losses,
    )
    if root is not None:
        result.save(root, registry)
    return result


def is_aligned_dir(path: Any) -> bool:
    """Whether ``path`` (a str or path) names a directory written by :func:`align` (``align.json`` inside)."""
    if not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and ("\n" in path or len(path) > 4096)):
        return False
    try:
        return (Path(path) / ALIGN_MANIFEST).is_file()
    except OSError:
        return False


def aligned_encoder(directory: str | os.PathLike, registry: Registry | None = None) -> ProjectedEncoder:
    """The encoder + projector of an aligned directory as one encoder: vectors in the aligned space
    (``space`` says which), usable wherever an encoder is (``Hub.embed(encoder=DIR)``, ``mhub embed -e DIR``,
    ``hub.onnx.export(encoder=DIR)``, ``lm.plug(encoder=DIR)``)."""
    result = AlignResult.load(directory, registry=registry)
    root = Path(directory)
    state = root / ENCODER_STATE
    if state.is_file():  # a trained encoder without save_pretrained: its state dict beside (safetensors)
        from .._manifest import load_module_state

        load_module_state(result.encoder, root, ENCODER_STATE, f"aligned directory {str(root)!r}")
    elif result.config.train_encoder and not (root / "encoder").is_dir():
        raise BundleError(
            f"{str(root)!r}: the encoder was trained during alignment, but neither its save_pretrained output "
            f"(encoder/) nor its state dict ({ENCODER_STATE}) is in the directory; the projector alone would meet "
            "an untrained encoder"
        )
    enc = ProjectedEncoder(result.encoder, result.projector, result.space, name=f"aligned-{result.encoder_name}",
                           source=str(directory), transforms=result.transforms, registry=resolve_registry(registry))
    enc.preprocess_source = (str(result.encoder_name), dict(result.config.encoder_options))
    return enc
