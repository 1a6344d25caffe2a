"""Backbone providers: which plugin creates the feature extractor a suite names.

A provider (a plugin of kind ``backbone``) knows a set of network names and creates each one,
randomly initialised, as a :class:`Backbone`: the module and what the engine needs to know about
it — its feature size, its stages from input to output (what ``unfreeze`` and ``dlr`` group), the
number of input channels it reads and the normalisation it expects, and whether pretrained weights
exist for it at all. timm's models come from the built-in ``timm`` provider; the digit networks of
the domain-adaptation literature from ``digits``; a third party adds its own the same way.

Weights are not a provider's business: :func:`tlbench.models.weights.load_backbone` asks the weight
sources, and never falls back to random weights silently.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tlbench.errors import UserError
from tlbench.plugins.registry import Plugin

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A freshly created feature extractor and what the engine needs to know about it.

    ``network`` maps float images N×``in_chans``×S×S (already normalised with ``mean``/``std``) to
    pooled features N×``feature_dim``. ``stages`` lists the network's parameter names stage by
    stage, input side first; ``None`` means the network's own structure (timm's ``group_matcher``).
    ``input_size`` is the one image size the network accepts (fully connected layers after the
    convolutions fix it), or ``None`` for any size.
    """

    network: nn.Module
    feature_dim: int
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    stages: list[list[str]] | None = None
    #: the provider that created it (set by tlbench when it loads the backbone; recorded per cell)
    provider: str = ""
    #: the weights loaded into it: ``source``, and the ``file`` read with its ``sha256`` ("" when the
    #: source read no single file); ``{"source": "random"}`` when untrained (set by tlbench; recorded per cell)
    weights: dict[str, str] = field(default_factory=dict)


class BackboneProvider(Plugin):
    """Base class of backbone plugins: a family of networks created by name.

    ``names`` lists every network the provider creates (wildcards filter it); ``create(name)``
    returns one, randomly initialised from torch's global generator; ``has_pretrained(name)`` says
    whether pretrained weights exist for it anywhere (``False`` for a network that is only ever
    trained from scratch: ``weights: auto`` is then an error asking for ``weights: random``);
    ``input_size(name)`` is the one image size a network accepts (fully connected layers after
    the convolutions fix it; checked against ``recipe.image_size`` before any cell runs), ``None``
    for any size. When two providers know a name, the one with the lower ``priority`` creates it.
    """

    plugin_kind: ClassVar[str] = "backbone"
    name: ClassVar[str] = ""
    priority: ClassVar[int] = 100

    def names(self, pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
        raise NotImplementedError

    def provides(self, name: str) -> bool:
        return name in self.names()

    def create(self, name: str) -> Backbone:
        raise NotImplementedError

    def has_pretrained(self, name: str) -> bool:
        return False

    def input_size(self, name: str) -> int | None:
        return None


def filter_names(names: list[str], pattern: str | None) -> list[str]:
    """``names`` matching a shell-style wildcard (all of them without one), sorted."""
    return sorted(n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern))


def providers(registry) -> list[BackboneProvider]:
    """Every registered provider, in the order they are asked (ascending priority, then name)."""
    found = [cls() for cls in registry.objects("backbone")]  # a provider's name clashing takes none away
    return sorted(found, key=lambda p: (p.priority, p.name))


def find_provider(name: str, registry) -> BackboneProvider:
    """The provider that creates backbone ``name``; an error with the closest known names otherwise."""
    every = providers(registry)
    for provider in every:
        if provider.provides(name):
            return provider
    if not every:
        raise UserError(f"unknown backbone {name!r}: no backbone provider is installed (see 'tlbench plugins')")
    known = [n for p in every for n in p.names()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    raise UserError(
        f"unknown backbone {name!r}; "
        + (f"did you mean {', '.join(close)}?" if close else "see 'tlbench list backbones PATTERN'")
    )


def list_backbones(registry, pattern: str | None = None, *, pretrained: bool = False) -> list[tuple[str, str]]:
    """(name, provider) for every backbone matching ``pattern``; a name two providers know is listed
    once, with the provider that creates it."""
    seen: dict[str, str] = {}
    for provider in providers(registry):
        for name in provider.names(pattern, pretrained=pretrained):
            seen.setdefault(name, provider.name)
    return sorted(seen.items())
