"""Building, saving and loading the starter pack: plans, budgets, ``pack.json`` and :class:`StarterPack`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from hub import Hub
from hub._atomic import atomic_dir, recover
from hub._manifest import hash_files, read_json
from hub.errors import BundleError, InvalidInputError, InvalidOptionsError
from hub.train import ALIGN_MANIFEST, AlignResult, align
from hub.train import pretrain as run_pretrain
from hub.train.align import ENCODER_STATE  # the core reads it back: the pack's audio is an aligned encoder too

from .data import BUILDERS, PACK_FORMAT, PACK_MANIFEST, VOICES, ANCHOR_ENCODER, StarterData, build_data
from .determinism import BUILD_THREADS, deterministic, environment, is_pinned, run_isolated
from .determinism import versions as _package_versions

# -- plans and budgets ----------------------------------------------------------------------


class ModalityPlan(BaseModel):
    """How the starter pack learns one modality: its data, encoder, pretraining and alignment."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    data: dict[str, Any] = Field(default_factory=dict, description="options of the data builder")
    encoder: str
    encoder_options: dict[str, Any] = Field(default_factory=dict)
    pretrain_epochs: int = Field(0, ge=0, description="contrastive pretraining epochs (0: none)")
    pretrain_objective: Literal["contrastive", "masked"] = "contrastive"
    pretrain_lr: float = Field(1e-3, gt=0)
    pretrain_batch_size: int = Field(64, ge=2)
    align_epochs: int = Field(10, ge=1)
    align_lr: float = Field(1e-3, gt=0)
    align_batch_size: int = Field(32, ge=2)
    train_encoder: bool = Field(False, description="train the encoder with the projector during alignment")
    projector: str = "mlp"
    normalise: bool = Field(False, description="remove nuisance factors before the encoder, in training and "
                            "whenever the pack embeds (hub_starter.normalise)")
    shift: dict[str, Any] = Field(default_factory=dict, description="options of the shifted evaluation set "
                                  "(hub_starter.shift; sizes)")
    align_views: int = Field(0, ge=0, le=16, description="augmented copies of every training pair added for "
                             "alignment (hub_starter.views)")


class StarterBudget(BaseModel):
    """A named set of plans, one per modality."""

    model_config = ConfigDict(extra="forbid")

    name: str
    plans: dict[str, ModalityPlan]


_POINTS = {"num_points": 512, "num_groups": 32, "group_size": 32, "dim": 64, "heads": 4}

#: the budgets :func:`build_starter_pack` knows; "full" aims at 6 minutes on 2 CPU cores, "tiny" is for tests
BUDGETS: dict[str, StarterBudget] = {
    "full": StarterBudget(name="full", plans={
        # digits: contrast, polarity, placement and scale normalised; alignment sees stroke / slant / rotation views
        "image": ModalityPlan(modality="image", encoder="tiny-clip", encoder_options={"image_size": 32},
                              pretrain_epochs=5, align_epochs=15, align_lr=2e-3, align_batch_size=64, train_encoder=True,
                              normalise=True, align_views=1),
        # spoken digits: alignment sees two views of every clip: speed (pitch moves too), noise, gain, shift,
        # band- and time-masked (chosen on seeds 2 and 3: shifted top-1 +0.007 / +0.030 over one view unmasked;
        # two band masks of up to 20 % with p 0.5 (views.RECIPES): +0.008 / +0.015 more)
        "audio": ModalityPlan(modality="audio", data={"combos": 48}, encoder="tiny-whisper",
                              align_epochs=15, align_lr=2e-3, train_encoder=True, align_views=2),
        "graph": ModalityPlan(modality="graph", data={"per_class": 60}, encoder="gin", pretrain_epochs=10,
                              align_epochs=20, align_lr=3e-3),
        # shapes: pose and per-axis stretch normalised (principal axes, unit spread); alignment sees stretch,
        # noise, cut and dropout views; contrastive pretraining no longer pays for its time here
        "3d": ModalityPlan(modality="3d", data={"per_class": 150}, encoder="tiny-point-bert", encoder_options=_POINTS,
                           pretrain_epochs=0, pretrain_lr=3e-4, align_epochs=15, train_encoder=True,
                           normalise=True, align_views=1),
    }),
    "tiny": StarterBudget(name="tiny", plans={
        "image": ModalityPlan(modality="image", data={"per_class": 4}, encoder="tiny-clip",
                              encoder_options={"image_size": 16}, pretrain_epochs=1, align_epochs=1, align_batch_size=16,
                              shift={"per_kind": 1}, normalise=True, align_views=1),
        "audio": ModalityPlan(modality="audio", data={"combos": 3, "voices": ("en", "en-us", "en+f3")},
                              encoder="tiny-whisper", align_epochs=1, align_batch_size=16, train_encoder=True,
                              shift={"per_kind": 1}),
        "graph": ModalityPlan(modality="graph", data={"per_class": 3}, encoder="gin", pretrain_epochs=1,
                              align_epochs=1, align_batch_size=16, shift={"per_class": 2}),
        "3d": ModalityPlan(modality="3d", data={"per_class": 3, "points": 160}, encoder="tiny-point-bert",
                           encoder_options={"num_points": 128, "num_groups": 8, "group_size": 16},
                           pretrain_epochs=1, align_epochs=1, align_batch_size=16, shift={"per_kind": 1},
                           normalise=True, align_views=1),
    }),
}


def _budget(budget: str | StarterBudget) -> StarterBudget:
    if isinstance(budget, StarterBudget):
        return budget
    if budget not in BUDGETS:
        raise InvalidOptionsError(f"unknown starter-pack budget {budget!r}; use one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


# -- the pack -------------------------------------------------------------------------------------


class PackManifest(BaseModel):
    """``pack.json``: what was built, from which seed and plan, how long it took, with which versions."""

    model_config = ConfigDict(extra="forbid")

    format: int = PACK_FORMAT
    kind: str = "starter-pack"
    seed: int
    budget: StarterBudget
    pretrain: bool = Field(True, description="False: pretraining skipped (the ablation)")
    anchor_encoder: str = ANCHOR_ENCODER
    modalities: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per modality: sizes, timings, losses")
    seconds: float = 0.0
    versions: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict, description="threads, instruction set, pinning "
                                        "variables and determinism of the build (hub_starter.determinism)")
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file (relative path → hex)")


# -- what a pack.json may ask the loader to rebuild ------------------------------------------------

_SHARE = (float, 0.0, 1.0)
#: modality → data option → (type, low, high): pack.json chooses the data that loading rebuilds (espeak-ng runs,
#: meshes sampled), so every size is capped and every option is on this list
DATA_LIMITS: dict[str, dict[str, tuple[type, float, float]]] = {
    "image": {"per_class": (int, 1, 1000), "size": (int, 8, 128), "held_out": _SHARE},
    "audio": {"combos": (int, 2, len(VOICES) * 16 * 16), "held_out": _SHARE, "rate": (int, 8000, 48000),
              "voices": (str, 1, len(VOICES)), "speeds": (int, 80, 500), "pitches": (int, 0, 99)},
    "graph": {"per_class": (int, 1, 500), "nodes": (int, 4, 200), "held_out": _SHARE},
    "3d": {"per_class": (int, 1, 500), "points": (int, 16, 8192), "noise": (float, 0.0, 1.0),
           "stretch": (float, 0.05, 20.0), "held_out": _SHARE},
}


def check_data_options(modality: str, options: dict[str, Any], where: str) -> None:
    """Refuse data options outside :data:`DATA_LIMITS` (:class:`BundleError` naming the option and the cap)."""
    limits = DATA_LIMITS.get(modality)
    if limits is None:
        raise BundleError(f"{where}: no starter data for modality {modality!r}; starter modalities: {', '.join(BUILDERS)}")
    for key, value in options.items():
        if value is None:  # the builder's default (bounded)
            continue
        if key not in limits:
            raise BundleError(f"{where}: {modality} data option {key!r} is not accepted ({', '.join(limits)}); refused")
        kind, low, high = limits[key]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and not 1 <= len(values) <= 16:
            raise BundleError(f"{where}: {modality} data option {key!r} lists {len(values)} values (1 to 16); refused")
        for v in values:
            if kind is str:
                if v not in VOICES:
                    raise BundleError(f"{where}: voice {v!r} is not one of the built-in espeak-ng voices; refused")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                raise BundleError(f"{where}: {modality} data option {key}={v!r} must be {kind.__name__}; refused")
            if not low <= v <= high:
                raise BundleError(f"{where}: {modality} data option {key}={v!r} is outside {low}..{high}; refused "
                                  "(a pack.json chooses what loading rebuilds, so its sizes are capped)")


@dataclass
class StarterPack:
    """Aligned encoders of every starter modality (one shared space, text as anchor) and their data."""

    directory: Path
    manifest: PackManifest
    results: dict[str, AlignResult]
    data: dict[str, StarterData]

    @property
    def modalities(self) -> list[str]:
        return list(self.results)

    def embed(self, modality: str, items: Sequence[Any]) -> torch.Tensor:
        """Normalized embeddings of ``items`` in the shared space: (items, 384)."""
        if modality not in self.results:
            raise InvalidInputError(f"the starter pack has no {modality!r} encoder; it has {', '.join(self.results)}")
        return self.results[modality].embed_aligned(self.prepare(modality, items))

    def prepare(self, modality: str, items: Sequence[Any]) -> list[Any]:
        """``items`` as the encoder of ``modality`` meets them: normalised when the plan says so."""
        plan = self.manifest.budget.plans.get(modality)
        return normalised(modality, items, plan is not None and plan.normalise)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalized embeddings of ``texts`` by the anchor (minilm-l6): (texts, 384)."""
        return next(iter(self.results.values())).embed_anchor(list(texts))




def normalised(modality: str, items: Sequence[Any], normalise: bool) -> list[Any]:
    """``items`` through :data:`hub_starter.normalise.NORMALISERS` (when ``normalise`` and there is one)."""
    from .normalise import NORMALISERS

    fn = NORMALISERS.get(modality) if normalise else None
    return [fn(x) for x in items] if fn is not None else list(items)


def _save_result(result: AlignResult, directory: Path) -> str | None:
    """``result.save(directory)``; for a trained encoder without ``save_pretrained`` (the audio presets) the
    projector bundle names the encoder by its registry name and its trained weights go beside it as a
    safetensors state dict (returned: the file name, which :func:`load_starter_pack` loads back)."""
    from safetensors.torch import save_model

    if not result.config.train_encoder or result.encoder_name is None or hasattr(result.encoder, "save_pretrained"):
        result.save(directory)
        return None
    import dataclasses

    frozen = dataclasses.replace(result, config=result.config.model_copy(update={"train_encoder": False}))
    frozen.save(directory)
    path = directory / ALIGN_MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["config"]["train_encoder"] = True  # the manifest tells the truth; the weights are the state dict
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    save_model(result.encoder, str(directory / ENCODER_STATE), metadata={"format": "pt"})
    return ENCODER_STATE


def _versions() -> dict[str, str]:
    return {**_package_versions(), "torch_threads": str(torch.get_num_threads())}


def _log(message: str, enabled: bool) -> None:
    if enabled:
        from tqdm.auto import tqdm

        tqdm.write(f"[starter-pack] {message}")


def default_pack_dir(hub: Hub | None = None, budget: str = "full", pretrain: bool = True) -> Path:
    """``<cache>/starter-pack`` (the "tiny" budget and no-pretraining packs get their own folders)."""
    name = "starter-pack" + ("" if budget == "full" else f"-{budget}") + ("" if pretrain else "-no-pretrain")
    return (hub or Hub()).cache_dir / name


def _same_build(manifest: PackManifest, seed: int, budget: StarterBudget, pretrain: bool, modalities: list[str]) -> bool:
    return (manifest.format == PACK_FORMAT and manifest.seed == seed and manifest.pretrain == pretrain
            and json.loads(manifest.budget.model_dump_json()) == json.loads(budget.model_dump_json())
            and sorted(manifest.modalities) == sorted(modalities))


def build_starter_pack(
    out_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    budget: str | StarterBudget = "full",
    pretrain: bool = True,
    modalities: Sequence[str] | None = None,
    hub: Hub | None = None,
    isolated: bool = False,
    threads: int = BUILD_THREADS,
) -> StarterPack:
    """Build (or load, when ``out_dir`` holds the same build) the starter pack.

    For every modality of ``budget`` (or of ``modalities``): build its data
    (seeded), pretrain the encoder self-supervised when the plan says so (and
    ``pretrain``), align it to the text anchor with InfoNCE on the training
    captions, and save it under ``out_dir/<modality>/``; ``out_dir/pack.json``
    records seed, plan, sizes, per-stage seconds and versions.  ``force``
    rebuilds.  Prints per-stage times and shows tqdm bars when ``progress``.

    Every build runs with deterministic algorithms and ``threads`` intra-op threads
    (:func:`hub_starter.determinism.deterministic`).  ``isolated=True`` builds in a child process
    started with the CPU instruction set and thread variables pinned (they only take effect before torch
    loads: :func:`hub_starter.determinism.run_isolated`), then loads the result here; the child uses the
    process-wide plugin registry and ``hub``'s cache directory.  ``pack.json`` records versions and
    the environment of the build either way.
    """
    hub = hub or Hub()
    plan = _budget(budget)
    mods = list(modalities) if modalities is not None else list(plan.plans)
    unknown = [m for m in mods if m not in plan.plans]
    if unknown:
        raise InvalidOptionsError(f"budget {plan.name!r} has no plan for {', '.join(unknown)}; it plans {', '.join(plan.plans)}")
    for m in mods:
        try:
            check_data_options(m, plan.plans[m].data, f"budget {plan.name!r}")
        except BundleError as exc:
            raise InvalidOptionsError(str(exc).replace("; refused", "")) from None
    root = Path(out_dir) if out_dir is not None else default_pack_dir(hub, plan.name, pretrain)
    recover(root, marker=PACK_MANIFEST, what="a starter pack")
    path = root / PACK_MANIFEST
    if path.is_file() and not force:
        try:
            manifest = PackManifest.model_validate(read_json(path, "pack.json"))
        except ValueError:  # BundleError, ValidationError: another or a broken build
            manifest = None
        if manifest is not None and _same_build(manifest, seed, plan, pretrain, mods):
            _log(f"loading the cached pack at {root}", progress)
            return load_starter_pack(root, hub=hub)
        _log(f"{root} holds another build; rebuilding", progress)
    if isolated and not is_pinned(threads):
        run_isolated({"out_dir": str(root), "seed": seed, "force": force, "budget": plan.model_dump(mode="json"),
                      "pretrain": pretrain, "modalities": mods, "progress": progress,
                      "cache_dir": str(hub.cache_dir)}, threads=threads, progress=progress)
        return load_starter_pack(root, hub=hub)
    with deterministic(threads), atomic_dir(root, marker=PACK_MANIFEST, what="a starter pack", allowed=BUILDERS) as stage:
        return _build(stage, root, plan, mods, seed, pretrain, progress, hub)


def _build(stage: Path, root: Path, plan: StarterBudget, mods: list[str], seed: int, pretrain: bool, progress: bool,
           hub: Hub) -> StarterPack:
    """Build every modality into ``stage`` (swapped in as ``root`` when this returns: hub._atomic)."""
    manifest = PackManifest(seed=seed, budget=plan, pretrain=pretrain, versions=_versions(), environment=environment())
    results: dict[str, AlignResult] = {}
    datasets: dict[str, StarterData] = {}
    start = time.perf_counter()
    for m in mods:
        p = plan.plans[m]
        times: dict[str, float] = {}
        t = time.perf_counter()
        data = build_data(m, seed, **p.data)
        pairs = data.pairs()
        if p.align_views:
            from .views import augmented_pairs

            pairs = augmented_pairs(hub.registry, m, pairs, p.align_views, seed)
        pairs = list(zip(normalised(m, [x for x, _ in pairs], p.normalise), [c for _, c in pairs]))
        train_items = normalised(m, data.split(False)[0], p.normalise)
        times["data"] = time.perf_counter() - t
        encoder: Any = p.encoder
        options: dict[str, Any] | None = dict(p.encoder_options)
        info: dict[str, Any] = {}
        if pretrain and p.pretrain_epochs:
            t = time.perf_counter()
            trained = run_pretrain(
                m, train_items, encoder=p.encoder, encoder_options=options, objective=p.pretrain_objective,
                epochs=p.pretrain_epochs, batch_size=p.pretrain_batch_size, lr=p.pretrain_lr, seed=seed,
                progress=progress, hub=hub,
            )
            times["pretrain"] = time.perf_counter() - t
            info["pretrain_epoch_losses"] = [round(x, 4) for x in trained.epoch_losses]
            encoder, options = trained.encoder, None
        t = time.perf_counter()
        result = align(
            m, pairs, encoder=encoder, encoder_options=options, anchor_encoder=ANCHOR_ENCODER,
            projector=p.projector, objective="infonce", train_encoder=p.train_encoder, epochs=p.align_epochs,
            batch_size=p.align_batch_size, lr=p.align_lr, seed=seed, progress=progress, hub=hub,
        )
        times["align"] = time.perf_counter() - t
        t = time.perf_counter()
        from .normalise import NORMALISERS, TRANSFORM

        if p.normalise and m in NORMALISERS:  # align.json names it: the directory used as an encoder normalises too
            result.transforms = [{"name": TRANSFORM, "params": {}}]
        state = _save_result(result, stage / m)
        result.directory = root / m  # where it lives once the staged pack is swapped in
        times["save"] = time.perf_counter() - t
        manifest.modalities[m] = {
            "classes": list(data.classes), "template": data.template, "train": int((~data.held_out).sum()),
            "held_out": int(data.held_out.sum()), "fingerprint": data.fingerprint(), "fingerprint_kind": "content",
            "encoder": p.encoder, "pretrained": bool(pretrain and p.pretrain_epochs),
            "encoder_state": state, "align_epoch_losses": [round(x, 4) for x in result.epoch_losses],
            "seconds": {k: round(v, 2) for k, v in times.items()}, **info,
        }
        _log(f"{m}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
             + f" ({len(data)} items, {int(data.held_out.sum())} held out)", progress)
        results[m], datasets[m] = result, data
    manifest.seconds = round(time.perf_counter() - start, 2)
    manifest.files = hash_files(stage)
    (stage / PACK_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")  # last
    _log(f"built in {manifest.seconds:.1f}s → {root}", progress)
    return StarterPack(root, manifest, results, datasets)


def _built_with(manifest: PackManifest) -> str:
    v = manifest.versions
    return ", ".join(f"{k} {v[k]}" for k in ("espeak-ng", "scikit-learn", "trimesh", "networkx", "numpy") if k in v) or "?"


def load_starter_pack(directory: str | os.PathLike, *, hub: Hub | None = None) -> StarterPack:
    """Load a pack written by :func:`build_starter_pack` (its data is rebuilt from the seed and checked).

    The pack is untrusted input, checked before anything is rebuilt or loaded: an interrupted build is
    repaired or reported torn; ``pack.json`` is size-capped and every file matches its sha256; modality
    names are starter modalities; the data options that drive the rebuild are on an allow-list with
    capped sizes (:data:`DATA_LIMITS`); ``encoder_state`` is a safetensors file inside the modality's
    directory whose header matches the encoder.  A pack without hashes loads with a warning."""
    import warnings

    from hub._manifest import LegacyFormatWarning, inside, load_module_state, read_manifest, verify_files

    hub = hub or Hub()
    root = Path(directory)
    recover(root, marker=PACK_MANIFEST, what="a starter pack")
    manifest = read_manifest(root / PACK_MANIFEST, PackManifest, "a starter pack", PACK_FORMAT,
                             "build it with build_starter_pack(); an invalid one rebuilds with force=True")
    where = str(root / PACK_MANIFEST)
    if manifest.files:
        verify_files(root, manifest.files, f"starter pack {str(root)!r}")
    else:
        warnings.warn(f"{where} lists no file hashes (built before they were recorded); its files are not verified. "
                      "Rebuild it with force=True", LegacyFormatWarning, stacklevel=2)
    for m in manifest.modalities:
        if m not in manifest.budget.plans:
            raise BundleError(f"{where}: modality {m!r} has no plan in the pack's budget; refused")
        check_data_options(m, manifest.budget.plans[m].data, f"{where}: budget.plans.{m}.data")
    results, datasets = {}, {}
    anchor = None
    for m, info in manifest.modalities.items():
        result = AlignResult.load(inside(root, m, f"{where}: modalities"), registry=hub.registry)
        if anchor is None:
            anchor = result.anchor_encoder
        elif result.anchor_encoder is not None:
            result.anchor_encoder = anchor  # one text anchor instance serves every modality
        state = info.get("encoder_state")
        if state:
            if not isinstance(state, str) or "/" in state or "\\" in state or not state.endswith(".safetensors"):
                raise BundleError(f"{where}: modalities.{m}.encoder_state {state!r} must name a .safetensors file in "
                                  f"{m}/; refused")
            load_module_state(result.encoder, inside(root, m, where), state, f"{where}: modalities.{m}.encoder_state")
            result.encoder.eval()
        data = build_data(m, manifest.seed, **manifest.budget.plans[m].data)
        # packs built before content was hashed recorded labels and split only
        found = data.fingerprint() if info.get("fingerprint_kind") == "content" else data.label_fingerprint()
        if found != info.get("fingerprint"):
            raise BundleError(
                f"the {m} data rebuilt from seed {manifest.seed} differs from the data the pack was built on "
                f"(fingerprint {found} != {info.get('fingerprint')}: the content of its items changed, e.g. "
                f"another espeak-ng, scikit-learn or trimesh version; built with {_built_with(manifest)}); "
                "rebuild with force=True"
            )
        results[m], datasets[m] = result, data
    return StarterPack(root, manifest, results, datasets)
