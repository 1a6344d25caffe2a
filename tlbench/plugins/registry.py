"""The registry: which plugin provides which strategy, dataset, shift, weight source, backbone, reporter, launcher.

One idea used everywhere (as in timm): ``register`` adds a name, ``names(kind, pattern)`` lists
them with shell-style wildcards, ``get(kind, name)`` returns the class. Plugins are found through
the ``tlbench`` entry-point group; built-ins load exactly like third-party packages. A plugin that
fails to import or to register is recorded with its error and skipped (``strict=True`` makes it
fatal), so one broken package never stops the others; a ``sys.exit()`` (any ``BaseException`` but
``KeyboardInterrupt``) in its module or a register hook is such a failure, never the command's exit.

Extra plugin modules can also be named, comma-separated, in the environment variable
``TLBENCH_PLUGINS`` (e.g. ``TLBENCH_PLUGINS=my_hooks,lab.strategies``): they are imported after
the entry points, in every process that builds a registry (launcher workers included, since they
inherit the environment), and reported by ``tlbench plugins`` like entry points, under their
module name. Handy for a lab's private hooks or a test's ``before_cell`` without packaging them.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata as md
import os
import re
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

import pluggy

from tlbench.errors import DuplicateNameError, UnknownNameError, UserError
from tlbench.plugins import hookspecs

ENTRY_POINT_GROUP = hookspecs.PROJECT
PLUGINS_ENV_VAR = "TLBENCH_PLUGINS"


@dataclass(frozen=True)
class Kind:
    """One kind of plugin: the hook that registers it and the contract its objects implement."""

    name: str  # the kind's key: "strategy"
    hook: str  # the hook spec whose ``register`` callback adds one: "register_strategies"
    contract: str  # the public base class, for messages: "tlbench.Strategy"


#: Every plugin kind. A new kind is a hook spec, a line here and a contract class whose
#: ``plugin_kind`` names it (docs/architecture.md, "A new plugin kind").
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("strategy", "register_strategies", "tlbench.Strategy"),
        Kind("dataset", "register_datasets", "tlbench.Dataset"),
        Kind("shift", "register_shifts", "tlbench.Shift"),
        Kind("weight_source", "register_weight_sources", "tlbench.WeightSource"),
        Kind("backbone", "register_backbones", "tlbench.BackboneProvider"),
        Kind("reporter", "register_reporters", "tlbench.Reporter"),
        Kind("launcher", "register_launchers", "tlbench.Launcher"),
        Kind("tracker", "register_trackers", "tlbench.Tracker"),
        Kind("validator", "register_validators", "tlbench.Validator"),
    )
}


class Plugin:
    """Base of every contract class (``Strategy``, ``Dataset``, ...): ``plugin_kind`` says which
    kind a subclass belongs to, so the registry checks what it is given without importing any
    contract module (the registry is the bottom layer; the contracts build on it)."""

    plugin_kind: ClassVar[str] = ""


@dataclass
class PluginInfo:
    """What ``tlbench plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str


#: what a registered name may be: suites, ``--strategies``, pairs (``a->b+shift``) and every report
#: write it as one plain word, so no spaces, control characters, ``->``, ``+`` or ``:``
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
NAME_RULE = "a name is 1 to 100 letters, digits, '_', '.' or '-', starting with a letter or a digit"


class PluginLoadError(UserError):
    """Raised in strict mode when a plugin fails to import or register."""


class AmbiguousNameError(UserError):
    """A name that several plugins registered was asked for."""


class Registry:
    """All plugins of one process, loaded once."""

    def __init__(
        self, *, strict: bool = False, entry_points: bool = True, plugins: dict[str, ModuleType | object] | None = None
    ):
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        #: (kind, name) -> every plugin that registered it, when more than one did
        self._clashes: dict[tuple[str, str], list[str]] = {}
        if entry_points:
            self._load_entry_points()
            self._load_env_plugins()
        for name, module in (plugins or {}).items():
            self.add_plugin(name, module)

    # -- loading ---------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
            )
            try:
                module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a broken plugin (sys.exit() too) is named and skipped
                self._fail(info, f"failed to import {ep.value}: {type(exc).__name__}: {exc}", exc)
                self.plugins[ep.name] = info
                continue
            self.add_plugin(ep.name, module, info=info)

    def _load_env_plugins(self) -> None:
        """The modules named in ``$TLBENCH_PLUGINS`` (comma-separated), after the entry points."""
        for module_name in [m.strip() for m in os.environ.get(PLUGINS_ENV_VAR, "").split(",") if m.strip()]:
            if module_name in self.plugins:
                continue
            info = PluginInfo(name=module_name, module=module_name)
            try:
                module = importlib.import_module(module_name)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a broken plugin (sys.exit() too) is named and skipped
                self._fail(
                    info,
                    f"failed to import {module_name} (named in ${PLUGINS_ENV_VAR}): {type(exc).__name__}: {exc}",
                    exc,
                )
                self.plugins[module_name] = info
                continue
            self.add_plugin(module_name, module, info=info)

    def add_plugin(self, name: str, module: ModuleType | object, *, info: PluginInfo | None = None) -> None:
        """Register one plugin object (a module with ``@hookimpl`` functions) and collect its names."""
        info = info or PluginInfo(name=name, module=getattr(module, "__name__", repr(module)))
        self.plugins[name] = info
        try:
            self.pm.register(module, name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin (sys.exit() too) is named and skipped
            self._fail(info, f"failed to register: {type(exc).__name__}: {exc}", exc)
            return
        for kind in KINDS.values():
            for impl in getattr(self.pm.hook, kind.hook).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._registrar(kind, name, info))
                except (PluginLoadError, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # noqa: BLE001 - a broken plugin (sys.exit() too) is named and skipped
                    self._fail(info, f"{kind.hook} raised {type(exc).__name__}: {exc}", exc)

    def _registrar(self, kind: Kind, plugin: str, info: PluginInfo):
        """The ``register`` callback a hook gets: a name that is taken or not allowed
        (:data:`NAME_PATTERN`) or an object of the wrong type is reported and skipped, and the
        plugin's other names still register."""

        def register(obj: Any) -> None:
            try:
                self._register(kind, obj, plugin)
            except (DuplicateNameError, TypeError, ValueError) as exc:
                self._fail(info, f"{kind.hook}: {type(exc).__name__}: {exc}", exc)

        return register

    def _register(self, kind: Kind, obj: Any, plugin: str) -> None:
        cls = obj if isinstance(obj, type) else type(obj)
        if not (issubclass(cls, Plugin) and cls.plugin_kind == kind.name):
            raise TypeError(f"{obj!r} is not a {kind.contract} subclass")
        key = getattr(obj, "name", None)
        if not isinstance(key, str) or not key:
            raise TypeError(f"{obj!r} has no 'name' attribute")
        if not NAME_PATTERN.fullmatch(key):
            shown = repr(key) if len(key) <= 60 else f"{key[:40]!r}... ({len(key)} characters)"
            raise ValueError(f"{kind.name} name {shown} is not allowed: {NAME_RULE}")
        taken = self._entries[kind.name].get(key)
        if taken is not None:
            self._clashes.setdefault((kind.name, key), [taken.plugin]).append(plugin)
            raise DuplicateNameError(
                f"{kind.name} {key!r} is registered by both plugin {taken.plugin!r} and plugin {plugin!r}"
            )
        self._entries[kind.name][key] = Entry(kind.name, key, obj, plugin)
        self.plugins[plugin].registered.setdefault(kind.name, []).append(key)

    def _fail(self, info: PluginInfo, message: str, exc: BaseException) -> None:
        info.errors.append(message)
        if self.strict:
            raise PluginLoadError(f"plugin {info.name!r}: {message}") from exc

    # -- lookup ----------------------------------------------------------------------------
    def names(self, kind: str, pattern: str | None = None) -> list[str]:
        """Registered names of ``kind``, sorted, filtered by a shell-style wildcard."""
        names = sorted(self._entries[_check_kind(kind)])
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def get(self, kind: str, name: str) -> Any:
        """The registered class (or object) for ``name``; an error with close names otherwise, and
        an error naming every plugin when several registered it (tlbench never picks one of them)."""
        clash = self._clashes.get((kind, name))
        if clash:
            raise AmbiguousNameError(
                f"{kind.replace('_', ' ')} {name!r} is registered by {len(clash)} plugins: "
                f"{', '.join(repr(p) for p in clash)}; tlbench will not choose between them: uninstall or "
                "rename one (see 'tlbench plugins')"
            )
        return self.entry(kind, name).obj

    def entry(self, kind: str, name: str) -> Entry:
        """The registration of ``name``: its object and the plugin that registered it first."""
        try:
            return self._entries[_check_kind(kind)][name]
        except KeyError:
            raise UnknownNameError(kind.replace("_", " "), name, self._entries[kind]) from None

    def failures(self) -> list[tuple[str, str]]:
        return [(p.name, e) for p in self.plugins.values() for e in p.errors]

    @property
    def hook(self) -> Any:
        return self.pm.hook


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UserError(f"unknown plugin kind {kind!r}; one of: {', '.join(KINDS)}")
    return kind


_default: Registry | None = None


def get_registry(*, strict: bool = False, reload: bool = False) -> Registry:
    """The process-wide registry of installed plugins (loaded on first use)."""
    global _default
    if _default is None or reload or (strict and not _default.strict):
        _default = Registry(strict=strict)
    return _default


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests, embedding applications)."""
    global _default
    _default = registry


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
