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

Two plugins may register one name (issue 34): both are kept, each reachable by its *qualified name*
``<qualifier>:<name>``, the qualifier being the plugin's distribution (``tlbench:cdan`` for the
built-in, ``tlbench-mcc:mcc`` for a package named tlbench-mcc) or, for a plugin not from a
distribution (``$TLBENCH_PLUGINS``), its plugin name (``lab_hooks:mcc``); a plugin's own name is
accepted as qualifier too. A bare name registered once means that registration. When the built-in
and exactly one third-party plugin register it, the bare name keeps meaning the third party's (it
was there first for its users: a tlbench release never swaps the code under an existing suite) and
the built-in is ``tlbench:<name>``; two or more third parties leave the bare name ambiguous, and
asking for it names the qualified names to use. Either way ``clashes()`` says so (a warning, not a
plugin failure) and ``tlbench plugins`` shows which registration each clashed name resolves to.
"""

from __future__ import annotations

import difflib
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
    """One registration: a name, its object and the plugin that registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str
    #: what a qualified name starts with: the plugin's distribution, else the plugin's name
    qualifier: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.qualifier or self.plugin}:{self.name}"


#: what a registered name may be: suites, ``--strategies``, pairs (``a->b+shift``) and every report
#: write it as one plain word, so no spaces, control characters, ``->``, ``+`` or ``:`` (``:`` joins
#: a qualifier to a name: ``tlbench:cdan``)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
NAME_RULE = "a name is 1 to 100 letters, digits, '_', '.' or '-', starting with a letter or a digit"


class PluginLoadError(UserError):
    """Raised in strict mode when a plugin fails to import or register."""


class AmbiguousNameError(UserError):
    """A bare name that several third-party plugins registered was asked for."""


class UnknownQualifierError(UnknownNameError):
    """A qualified name whose qualifier registers no such name: says which qualifiers do."""

    def __init__(self, kind: str, name: str, message: str):
        self.kind, self.name = kind, name
        super(UnknownNameError, self).__init__(message)  # the message is ours, not UnknownNameError's


#: the distribution that ships the built-ins, and their package
BUILTIN_DISTRIBUTION = "tlbench"
BUILTIN_PACKAGE = "tlbench_builtins"


class Registry:
    """All plugins of one process, loaded once."""

    def __init__(
        self, *, strict: bool = False, entry_points: bool = True, plugins: dict[str, ModuleType | object] | None = None
    ):
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        #: kind -> name -> every registration of it, in the order they came
        self._entries: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
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
        """The ``register`` callback a hook gets: a name that is not allowed (:data:`NAME_PATTERN`),
        one the plugin already registered, or an object of the wrong type is reported and skipped,
        and the plugin's other names still register. A name another plugin took is kept beside it."""

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
        taken = self._entries[kind.name].setdefault(key, [])
        if any(e.plugin == plugin for e in taken):
            raise DuplicateNameError(f"{kind.name} {key!r} is registered twice by plugin {plugin!r}")
        qualifier = self.plugins[plugin].distribution or plugin
        taken.append(Entry(kind.name, key, obj, plugin, qualifier))
        self.plugins[plugin].registered.setdefault(kind.name, []).append(key)

    def _fail(self, info: PluginInfo, message: str, exc: BaseException) -> None:
        info.errors.append(message)
        if self.strict:
            raise PluginLoadError(f"plugin {info.name!r}: {message}") from exc

    # -- lookup ----------------------------------------------------------------------------
    def names(self, kind: str, pattern: str | None = None) -> list[str]:
        """Registered names of ``kind``, sorted, filtered by a shell-style wildcard: bare names (a
        name several plugins registered, once), or every qualified name for a pattern with a ``:``
        (``tlbench:*``, ``*:mcc``)."""
        if pattern is not None and ":" in pattern:
            return sorted(n for n in self.qualified_names(kind) if fnmatch.fnmatchcase(n, pattern))
        names = sorted(self._entries[_check_kind(kind)])
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def qualified_names(self, kind: str) -> list[str]:
        """Every registration's qualified name (``tlbench:dann``), sorted."""
        return sorted(self.qualified(e) for e in self.registrations(kind))

    def registrations(self, kind: str, name: str | None = None) -> list[Entry]:
        """Every registration of ``kind`` (of bare ``name`` only, when given), clashes included."""
        table = self._entries[_check_kind(kind)]
        return list(table.get(name, [])) if name is not None else [e for n in sorted(table) for e in table[n]]

    def resolvable(self, kind: str) -> list[str]:
        """The bare names of ``kind`` that mean one registration (an ambiguous one left out), sorted."""
        return [n for n, entries in sorted(self._entries[_check_kind(kind)].items()) if self._choose(entries)]

    def objects(self, kind: str) -> list[Any]:
        """Every registered object of ``kind``, by name, clashes included: for kinds asked in turn
        (backbone providers, weight sources), where a clash takes nothing away."""
        return [e.obj for e in self.registrations(kind)]

    def get(self, kind: str, name: str) -> Any:
        """The registered class (or object) for ``name``, bare or qualified; an error with close
        names otherwise, and one naming the qualified names when the bare name is ambiguous."""
        return self.entry(kind, name).obj

    def entry(self, kind: str, name: str) -> Entry:
        """The registration ``name`` (bare or qualified) means: its object and its plugin."""
        if ":" in name:
            return self._qualified_entry(_check_kind(kind), name)
        entries = self.registrations(kind, name)
        if not entries:
            raise UnknownNameError(kind.replace("_", " "), name, self._entries[kind])
        chosen = self._choose(entries)
        if chosen is None:
            shown = ", ".join(repr(e.plugin) for e in entries)
            raise AmbiguousNameError(
                f"{kind.replace('_', ' ')} {name!r} is registered by {len(entries)} plugins: {shown}; tlbench "
                f"will not choose between them: write {_alternatives(self, entries)} (see 'tlbench plugins')"
            )
        return chosen

    def resolve(self, kind: str, name: str) -> Entry | None:
        """What ``name`` means, as :meth:`entry`, but None for a bare name that is ambiguous."""
        try:
            return self.entry(kind, name)
        except AmbiguousNameError:
            return None

    def alternatives(self, kind: str, name: str) -> str:
        """``a:x or b:x``: the qualified names of every registration of bare ``name``."""
        return _alternatives(self, self.registrations(kind, name))

    def _qualified_entry(self, kind: str, text: str) -> Entry:
        qualifier, _, name = text.rpartition(":")
        entries = self.registrations(kind, name)
        found = [e for e in entries if qualifier == e.plugin or _normalize(qualifier) == _normalize(e.qualifier)]
        if len(found) == 1:
            return found[0]
        shown = kind.replace("_", " ")
        if found:  # two plugins of one distribution: their plugin names tell them apart
            raise AmbiguousNameError(
                f"{shown} {text!r} is registered by {len(found)} plugins of {qualifier!r}: write "
                f"{' or '.join(f'{e.plugin}:{name}' for e in found)}"
            )
        if not entries:  # suggest by the bare name: every qualified name of one qualifier looks alike
            close = difflib.get_close_matches(name, list(self._entries[kind]), n=3, cutoff=0.6)
            like = [self.qualified(e) for n in close for e in self._entries[kind][n]]
            hint = f"did you mean {', '.join(like)}?" if like else f"known: {', '.join(self.qualified_names(kind))}"
            raise UnknownQualifierError(shown, text, f"unknown {shown} {text!r}; {hint}")
        known = any(
            qualifier == i.name or _normalize(qualifier) == _normalize(i.distribution or "")
            for i in self.plugins.values()
        )
        why = (
            f"{qualifier!r} registers no {shown} {name!r}"
            if known
            else f"no plugin or distribution is named {qualifier!r}"
        )
        raise UnknownQualifierError(
            shown, text, f"unknown {shown} {text!r}: {why}; {name!r} is registered as {_alternatives(self, entries)}"
        )

    def _choose(self, entries: list[Entry]) -> Entry | None:
        """What a bare name means: its only registration; the third party's, when the built-in and
        exactly one third-party plugin registered it; None (ambiguous) otherwise."""
        if len(entries) == 1:
            return entries[0]
        third = [e for e in entries if not self.is_builtin(e.plugin)]
        return third[0] if len(third) == 1 else None

    def is_builtin(self, plugin: str) -> bool:
        """Whether ``plugin`` is one of tlbench's own (distribution tlbench, package tlbench_builtins)."""
        info = self.plugins.get(plugin)
        return bool(info and info.distribution == BUILTIN_DISTRIBUTION and info.module.startswith(BUILTIN_PACKAGE))

    def qualified(self, entry: Entry) -> str:
        """``entry``'s qualified name: by its distribution, or by its plugin's name where two plugins
        of one distribution registered the name."""
        twins = [e for e in self.registrations(entry.kind, entry.name) if e.qualifier == entry.qualifier]
        return entry.qualified_name if len(twins) <= 1 else f"{entry.plugin}:{entry.name}"

    def clashes(self) -> list[str]:
        """One line per name that several plugins registered: what its bare name resolves to, and why."""
        lines = []
        for kind in KINDS:
            for name, entries in sorted(self._entries[kind].items()):
                if len(entries) > 1:
                    lines.append(f"{kind.replace('_', ' ')} {name!r}: {self._resolution(entries)}")
        return lines

    def _resolution(self, entries: list[Entry]) -> str:
        chosen = self._choose(entries)
        if chosen is None:
            return f"ambiguous: use {_alternatives(self, entries)}"
        builtins = " and ".join(self.qualified(e) for e in entries if e is not chosen)
        return (
            f"bare name resolves to {self.qualified(chosen)} (a third-party plugin takes precedence over the "
            f"built-in; the built-in is {builtins})"
        )

    def failures(self) -> list[tuple[str, str]]:
        return [(p.name, e) for p in self.plugins.values() for e in p.errors]

    @property
    def hook(self) -> Any:
        return self.pm.hook


def _alternatives(registry: Registry, entries: list[Entry]) -> str:
    """``a:x or b:x``: the qualified names of ``entries``."""
    return " or ".join(registry.qualified(e) for e in entries)


def _normalize(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): ``TLBench_MCC`` is ``tlbench-mcc``."""
    return re.sub(r"[-_.]+", "-", name).lower()


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
