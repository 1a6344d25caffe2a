"""A test plugin (loaded through ``$TLBENCH_PLUGINS``) that registers a name a built-in already took,
``source_only``, next to a name of its own: both registrations are kept (the bare name means this
plugin's, ``tlbench:source_only`` the built-in), the clash is reported, its own name works."""

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
