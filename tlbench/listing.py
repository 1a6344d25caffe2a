"""What ``tlbench list`` and ``tlbench plugins`` print, and the one-line form of any text a plugin or a
suite gives tlbench to print (names, messages): neither can break a line nor drive the terminal."""

from __future__ import annotations

KIND_ALIASES = {
    "strategies": "strategy",
    "datasets": "dataset",
    "shifts": "shift",
    "weights": "weight_source",
    "weight_sources": "weight_source",
    "reporters": "reporter",
    "reports": "reporter",
    "launchers": "launcher",
    "trackers": "tracker",
    "validators": "validator",
    "backbone_providers": "backbone",
}
#: the width of the name columns of ``tlbench list`` and ``tlbench plugins`` (longer names widen it)
NAME_WIDTH, PLUGIN_WIDTH = 20, 28


def list_command(kind_name: str, pattern: str | None, registry, *, pretrained: bool = False) -> int:
    """``tlbench list KIND [PATTERN]``: one line per registered name, its plugin and what it is."""
    if kind_name == "suites":
        return list_suites(pattern)
    if kind_name == "backbones":
        from tlbench.models.backbones import list_backbones

        rows = list_backbones(registry, pattern, pretrained=pretrained)
        width = max([NAME_WIDTH, *(len(n) for n, _ in rows)])
        for name, provider in rows:
            print(f"{name:{width}s} {provider}")
        return 0
    kind = KIND_ALIASES[kind_name]
    names = registry.names(kind, pattern)
    entries = [registry.resolve(kind, n) for n in names]  # None: a bare name several third parties registered
    width = max([NAME_WIDTH, *map(len, names)])
    plugin_width = max([PLUGIN_WIDTH, *(len(column(e.plugin)) for e in entries if e)])
    for name, e in zip(names, entries):
        plugin, what = (
            (column(e.plugin), summary(e.obj)) if e else ("(ambiguous)", f"use {registry.alternatives(kind, name)}")
        )
        print(one_line(f"{name:{width}s} {plugin:{plugin_width}s} {what}"))
    return 0


def list_suites(pattern: str | None) -> int:
    """``tlbench list suites``: the shipped suites and their descriptions."""
    from tlbench.spec.shipped import describe_shipped

    rows = describe_shipped(pattern)
    width = max([NAME_WIDTH, *(len(n) for n, _ in rows)])
    for name, description in rows:
        print(f"{name:{width}s} {description}")
    return 0


def one_line(text: str) -> str:
    """``text`` as one line of a terminal: a control character (a newline, an escape sequence's ESC,
    NUL, a right-to-left override) written as its Python escape, so a name or message from a plugin
    or a suite can neither break a line nor drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(name: str, limit: int = 60) -> str:
    """A name quoted in a message: its repr, cut when longer than ``limit`` characters."""
    return repr(name) if len(name) <= limit else f"{name[: limit - 20]!r}... ({len(name):,} characters)"


def column(name: str, limit: int = 60) -> str:
    """A name in a column of ``tlbench list`` or ``tlbench plugins``: one line, cut when longer than
    ``limit`` characters (the column is as wide as its longest entry)."""
    name = one_line(name)
    return name if len(name) <= limit else f"{name[: limit - 3]}..."


def summary(obj) -> str:
    """What ``tlbench list`` says about a plugin: its ``description`` when set, else the first
    docstring line."""
    description = getattr(obj, "description", "")
    if isinstance(description, str) and description.strip():
        return description.strip()
    doc = (getattr(obj, "__doc__", "") or "").strip().splitlines()
    return doc[0] if doc else ""


def plugins_command(registry) -> int:
    """``tlbench plugins``: every plugin, its distribution, what it registered, its errors and the clashes."""
    infos = sorted(registry.plugins.values(), key=lambda i: i.name)
    width = max([PLUGIN_WIDTH, *(len(column(i.name)) for i in infos)])
    for info in infos:
        dist = f"{info.distribution} {info.version}" if info.distribution else "(not from a distribution)"
        names = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registered.items())) or "nothing"
        status = "FAILED" if info.errors else "ok"
        print(one_line(f"{column(info.name):{width}s} {status:6s} {dist:22s} {names}"))
        for e in info.errors:
            print(one_line(f"{'':{width}s} error: {e}"))
    clashes = [one_line(c) for c in registry.clashes()]
    if clashes:  # not failures: every registration is kept, each reachable as qualifier:name
        print("\nnames several plugins register (write qualifier:name for another one):", *clashes, sep="\n  ")
    return 1 if registry.failures() else 0
