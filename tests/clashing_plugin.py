"""A test plugin (loaded through ``$TLBENCH_PLUGINS``) that registers a name another plugin already
took, ``source_only``, next to a name of its own: the clash is reported, its own name still works."""

from __future__ import annotations

from tlbench import Strategy, hookimpl


class ClashingSourceOnly(Strategy):
    name = "source_only"


class OwnStrategy(Strategy):
    """A strategy only this plugin provides."""

    name = "clashing_plugin_own"


@hookimpl
def register_strategies(register):
    register(ClashingSourceOnly)
    register(OwnStrategy)
