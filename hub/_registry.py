"""Plugin discovery and the registry of modalities, encoders and backbones.

Plugins are found through the ``modality_hub`` entry-point group, lazily (on
first use, never at import) and once.  ``MODALITY_HUB_PLUGINS`` allow-lists
them: unset loads every installed plugin; a comma-separated list of plugin or
distribution names loads only those; an empty string loads none.

A plugin that fails to import or register is recorded with its error (see
``mhub plugins``) and everything it tried to register is dropped; the hub
keeps working with the rest.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import threading
import traceback
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from . import hookspecs
from .errors import (
    DuplicateNameError,
    InvalidOptionsError,
    PluginError,
    UnknownEncoderError,
    UnknownModalityError,
)
from .specs import AugmentationSpec, BackboneSpec, EncoderSpec, Modality, PluginInfo, ProjectorSpec

__all__ = ["Registry", "default_registry", "resolve_registry", "ENV_PLUGINS", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "modality_hub"
ENV_PLUGINS = "MODALITY_HUB_PLUGINS"

_HOOKS: dict[str, tuple[str, type]] = {
    # hook name -> (kind, spec type)
    "register_modalities": ("modality", Modality),
    "register_encoders": ("encoder", EncoderSpec),
    "register_backbones": ("backbone", BackboneSpec),
    "register_augmentations": ("augmentation", AugmentationSpec),
    "register_projectors": ("projector", ProjectorSpec),
}

#: the core distribution: its own entry points (built-in projector kinds) load whatever MODALITY_HUB_PLUGINS says
CORE_DISTRIBUTION = "modality-hub"


@dataclass(frozen=True)
class _Entry:
    spec: Any
    plugin: str


def _where(info: PluginInfo) -> str:
    if info.distribution:
        return f"plugin {info.name!r} (distribution {info.distribution} {info.version or ''})".replace(" )", ")")
    return f"plugin {info.name!r} (registered in-process)"


class Registry:
    """Modalities, encoders and backbones registered by plugins."""

    def __init__(self, *, entry_point_group: str = ENTRY_POINT_GROUP, load_entry_points: bool = True) -> None:
        self._group = entry_point_group
        self._load_eps = load_entry_points
        self._loaded = False
        self._lock = threading.RLock()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._tables: dict[str, dict[str, _Entry]] = {kind: {} for kind, _ in _HOOKS.values()}
        self._plugins: dict[str, PluginInfo] = {}

    # -- loading -------------------------------------------------------------
    def load(self) -> None:
        """Discover entry-point plugins once (later calls do nothing)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if not self._load_eps:
                return
            allow = os.environ.get(ENV_PLUGINS)
            allowed = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}
            seen: set[str] = set()
            for ep in sorted(entry_points(group=self._group), key=lambda e: e.name):
                dist = ep.dist.name if ep.dist is not None else None
                version = ep.dist.version if ep.dist is not None else None
                core = dist is not None and dist.lower().replace("_", "-") == CORE_DISTRIBUTION
                if allowed is not None and not core and ep.name not in allowed and (dist not in allowed):
                    continue
                if ep.name in seen:  # the same plugin visible twice on sys.path
                    continue
                seen.add(ep.name)
                try:
                    plugin = ep.load()
                except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the hub down
                    self._plugins[ep.name] = PluginInfo(
                        ep.name, dist, version, error=f"import failed: {type(exc).__name__}: {exc}"
                    )
                    continue
                self.register_plugin(plugin, name=ep.name, distribution=dist, version=version, raise_errors=False)

    def _ensure(self) -> None:
        if not self._loaded:
            self.load()

    # -- registration --------------------------------------------------------
    def register_plugin(
        self,
        plugin: Any,
        *,
        name: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
        raise_errors: bool = True,
    ) -> PluginInfo:
        """Register a plugin object (a module or any object with hookimpls).

        Everything the plugin registers is validated first and committed
        together; on any error nothing is kept, the failure is recorded in
        :meth:`plugins`, and (with ``raise_errors``) a :class:`PluginError` is raised.
        """
        with self._lock:
            self._ensure()
            name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
            info = PluginInfo(name, distribution, version)
            if name in self._plugins and self._plugins[name].ok:
                return self._fail(
                    info,
                    DuplicateNameError(
                        f"plugin name {name!r} is already taken by {_where(self._plugins[name])}; "
                        f"{_where(info)} cannot use it. Uninstall one of them."
                    ),
                    raise_errors,
                )
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:  # noqa: BLE001 - pluggy's validation errors
                return self._fail(info, PluginError(f"{_where(info)} is not a valid plugin: {exc}"), raise_errors)
            try:
                staged = self._collect(plugin, info)
                self._check_duplicates(staged, info)
            except Exception as exc:  # noqa: BLE001
                self.pm.unregister(plugin)
                if not isinstance(exc, PluginError):
                    tb = traceback.extract_tb(exc.__traceback__)[-1]
                    exc = PluginError(
                        f"{_where(info)} failed while registering: {type(exc).__name__}: {exc} "
                        f"(at {os.path.basename(tb.filename)}:{tb.lineno})"
                    )
                return self._fail(info, exc, raise_errors)
            for kind, specs in staged.items():
                for spec in specs:
                    self._tables[kind][_key(spec)] = _Entry(spec, name)
            info = replace(
                info,
                modalities=tuple(s.name for s in staged["modality"]),
                encoders=tuple(s.name for s in staged["encoder"]),
                backbones=tuple(s.name for s in staged["backbone"]),
                augmentations=tuple(_key(s) for s in staged["augmentation"]),
                projectors=tuple(s.kind for s in staged["projector"]),
            )
            self._plugins[name] = info
            return info

    def _fail(self, info: PluginInfo, exc: Exception, raise_errors: bool) -> PluginInfo:
        info = replace(info, error=str(exc))
        if info.name not in self._plugins or not self._plugins[info.name].ok:
            self._plugins[info.name] = info
        if raise_errors:
            raise exc
        return info

    def _collect(self, plugin: Any, info: PluginInfo) -> dict[str, list]:
        staged: dict[str, list] = {kind: [] for kind, _ in _HOOKS.values()}
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        for hook, (kind, typ) in _HOOKS.items():

            def register(spec: Any, _kind: str = kind, _typ: type = typ, _hook: str = hook) -> None:
                if not isinstance(spec, _typ):
                    raise PluginError(
                        f"{_where(info)}: {_hook}() registered {type(spec).__name__}; expected hub.{_typ.__name__}"
                    )
                staged[_kind].append(spec)

            self.pm.subset_hook_caller(hook, remove_plugins=others)(register=register)
        return staged

    def _check_duplicates(self, staged: dict[str, list], info: PluginInfo) -> None:
        for kind, specs in staged.items():
            names: set[str] = set()
            for spec in specs:
                key = _key(spec)
                if key in names:
                    raise DuplicateNameError(f"{_where(info)} registers {kind} {key!r} twice")
                names.add(key)
                if key in self._tables[kind]:
                    owner = self._plugins[self._tables[kind][key].plugin]
                    raise DuplicateNameError(
                        f"{kind} {key!r} is registered twice: by {_where(owner)} and by {_where(info)}. "
                        f"Uninstall one of the two distributions, or rename the {kind} in one of them."
                    )

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered."""
        with self._lock:
            for table in self._tables.values():
                for key in [k for k, e in table.items() if e.plugin == name]:
                    del table[key]
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self._plugins.pop(name, None)

    # -- queries -------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or failed, by name."""
        self._ensure()
        return sorted(self._plugins.values(), key=lambda p: p.name)

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        self._ensure()
        return self._plugins[self._tables[kind][name].plugin]

    def list_modalities(self) -> list[str]:
        self._ensure()
        return sorted(self._tables["modality"])

    def modality(self, name: str) -> Modality:
        self._ensure()
        entry = self._tables["modality"].get(name)
        if entry is None:
            raise UnknownModalityError(self._unknown("modality", name, self.list_modalities()))
        return entry.spec

    def list_encoders(self, pattern: str = "*", modality: str | None = None, pretrained: bool | None = None) -> list[str]:
        """Encoder names matching an fnmatch ``pattern``, optionally of one modality."""
        self._ensure()
        if modality is not None:
            self.modality(modality)
        return sorted(
            name
            for name, e in self._tables["encoder"].items()
            if fnmatch.fnmatchcase(name, pattern)
            and (modality is None or e.spec.modality == modality)
            and (pretrained is None or e.spec.pretrained == pretrained)
        )

    def encoder_spec(self, name: str) -> EncoderSpec:
        """The spec of encoder ``name`` (a ``name.tag`` resolves to ``name``)."""
        self._ensure()
        base, _, tag = name.partition(".")
        entry = self._tables["encoder"].get(base)
        if entry is None:
            raise UnknownEncoderError(self._unknown("encoder", name, sorted(self._tables["encoder"])))
        if tag and tag not in entry.spec.tags:
            raise UnknownEncoderError(
                f"encoder {base!r} has no weight tag {tag!r}; tags: {sorted(entry.spec.tags) or 'none'}"
            )
        return entry.spec

    def create_encoder(self, name: str, **options: Any):
        """Build encoder ``name`` (or ``name.tag``) with validated ``options``."""
        spec = self.encoder_spec(name)
        self.modality(spec.modality)  # the modality's plugin must be installed too
        _, _, tag = name.partition(".")
        if tag:
            options.setdefault("weights", spec.tags[tag])
        kwargs = validate_options(spec.options, options, f"encoder {spec.name!r}")
        encoder = spec.factory(**kwargs)
        encoder.name = spec.name
        encoder.modality = spec.modality
        encoder.license = spec.license
        encoder.pretrained = spec.pretrained
        if getattr(encoder, "item_processor", None) is not None:  # errors name the encoder, as before the split
            encoder.item_processor.name = spec.name
        return encoder

    def create_processor(self, name: str, **options: Any):
        """The weights-free half of encoder ``name`` (:class:`hub.processor.Processor`), built from the same
        options by the spec's ``processor`` factory; an encoder without one is built whole and wrapped."""
        spec = self.encoder_spec(name)
        self.modality(spec.modality)
        if spec.processor is None:
            from .processor import EncoderProcessor

            return EncoderProcessor(self.create_encoder(name, **options))
        _, _, tag = name.partition(".")
        if tag:
            options.setdefault("weights", spec.tags[tag])
        processor = spec.processor(**validate_options(spec.options, options, f"encoder {spec.name!r}"))
        processor.name = spec.name
        processor.modality = spec.modality
        return processor

    def list_backbones(self) -> list[str]:
        self._ensure()
        return sorted(self._tables["backbone"])

    def backbone_spec(self, name: str) -> BackboneSpec:
        self._ensure()
        entry = self._tables["backbone"].get(name)
        if entry is None:
            raise UnknownEncoderError(self._unknown("backbone", name, self.list_backbones()))
        return entry.spec

    def list_augmentations(self, modality: str | None = None) -> list[str]:
        """Augmentation keys (``"<modality>/<name>"``), optionally of one modality."""
        self._ensure()
        return sorted(k for k, e in self._tables["augmentation"].items() if modality is None or e.spec.modality == modality)

    def augmentation(self, modality: str, name: str) -> AugmentationSpec:
        self._ensure()
        entry = self._tables["augmentation"].get(f"{modality}/{name}")
        if entry is None:
            known = [k.split("/", 1)[1] for k in self.list_augmentations(modality)]
            raise UnknownEncoderError(self._unknown(f"{modality} augmentation", name, known))
        return entry.spec

    def list_projectors(self) -> list[str]:
        """Registered projector kinds (``linear``, ``mlp``, ``resampler``, ``pool`` from the core, and plugins')."""
        self._ensure()
        return sorted(self._tables["projector"])

    def projector(self, kind: str) -> ProjectorSpec:
        """The spec of projector ``kind``."""
        self._ensure()
        entry = self._tables["projector"].get(kind) if isinstance(kind, str) else None
        if entry is None:
            raise InvalidOptionsError(
                f"unknown projector kind {kind!r}; valid kinds: {', '.join(self.list_projectors()) or 'none'}"
            )
        return entry.spec

    # -- command-line extensions -----------------------------------------------
    def register_commands(self, cli: Any) -> list[str]:
        """Call every loaded plugin's ``register_commands(cli)``; a plugin that fails loses only its commands
        (recorded in :meth:`plugins`).  Returns the names of the plugins that added commands."""
        self._ensure()
        done = []
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
                done.append(impl.plugin_name)
            except Exception as exc:  # noqa: BLE001 - one plugin's CLI must not take the others down
                info = self._plugins.get(impl.plugin_name)
                if info is not None:
                    self._plugins[impl.plugin_name] = replace(
                        info, error=f"register_commands failed: {type(exc).__name__}: {exc}")
        return done

    @staticmethod
    def _unknown(kind: str, name: str, known: list[str]) -> str:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        installed = ", ".join(known) if known else "none (install a plugin, e.g. `pip install modality-hub-text`)"
        return f"unknown {kind} {name!r}.{hint} Installed: {installed}. See `mhub plugins`."


def validate_options(model: type[BaseModel] | None, options: dict[str, Any], what: str) -> dict[str, Any]:
    """Validate user options through a pydantic model; typed error on failure."""
    if model is None:
        if options:
            raise InvalidOptionsError(f"{what} takes no options; got {sorted(options)}")
        return {}
    try:
        return model(**options).model_dump()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in exc.errors()
        )
        fields = ", ".join(f"{k}: {v.annotation.__name__ if hasattr(v.annotation, '__name__') else v.annotation}"
                           for k, v in model.model_fields.items())
        raise InvalidOptionsError(f"invalid options for {what}: {problems}. Accepted options: {fields}") from None


def _key(spec: Any) -> str:
    return getattr(spec, "key", spec.name)


_default: Registry | None = None
_default_lock = threading.Lock()


def resolve_registry(registry: Any = None, hub: Any = None) -> Registry:
    """The registry a lower layer works with: ``registry``, else ``hub.registry`` (a :class:`hub.Hub` or anything
    holding one), else the process-wide default.  Lower layers take these arguments; they never build a Hub."""
    got = registry if registry is not None else getattr(hub, "registry", None)
    return getattr(got, "registry", got) or default_registry()


def default_registry() -> Registry:
    """The process-wide registry (entry points load on first query)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


