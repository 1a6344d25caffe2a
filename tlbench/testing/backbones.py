"""The backbone-provider conformance check: does a provider give the engine what it relies on?"""

from __future__ import annotations

import torch
from torch import nn

from tlbench.models.backbones import Backbone, BackboneProvider
from tlbench.models.transfer import TransferModel
from tlbench.testing.common import _check_docstring, _check_plugin_name, _require

#: the image size used for networks that accept any size
BACKBONE_CHECK_SIZE = 32


def check_backbone(
    cls: type[BackboneProvider], names: list[str] | None = None, *, batch_size: int = 4, seed: int = 0
) -> None:
    """Check backbone provider ``cls`` on each of ``names`` (default: every name it lists).

    Checks: metadata (``name``, a docstring whose first line is one whole sentence, an integer
    ``priority``); ``names()`` lists unique
    strings that ``provides`` accepts and ``names(pattern)`` filters; ``create`` returns a
    :class:`tlbench.Backbone` whose ``in_chans`` is 1 or 3 with one ``mean``/``std`` entry per
    channel (std > 0); on N×in_chans×S×S images (S = ``input_size(name)`` or 32) the network
    returns finite N×``feature_dim`` features, in train and eval mode; ``stages``, when given,
    name every trainable parameter exactly once, in non-empty stages, so ``unfreeze``/``dlr``
    can group them; one backward from the features reaches every parameter; two creations
    under one seed are identical (random init from torch's global generator only);
    ``has_pretrained`` answers with a bool.
    """
    _require(
        isinstance(cls, type) and issubclass(cls, BackboneProvider),
        f"{cls!r} must be a subclass of tlbench.BackboneProvider",
    )
    _check_plugin_name(cls.__name__, cls.name)
    _check_docstring(cls, "backbone providers")
    _require(isinstance(cls.priority, int), f"{cls.__name__}.priority must be an int, got {cls.priority!r}")
    provider = cls()
    listed = provider.names()
    _require(
        isinstance(listed, list) and all(isinstance(n, str) and n for n in listed),
        f"{cls.__name__}.names() must return a list of non-empty strings, got {listed!r}",
    )
    _require(len(set(listed)) == len(listed), f"{cls.__name__}.names() lists a name twice")
    if listed:
        first = listed[0]
        _require(
            provider.names(first) == [first],
            f"{cls.__name__}.names({first!r}) must return [{first!r}] "
            f"(a pattern without wildcards matches that name only)",
        )
    for name in names if names is not None else listed:
        _require(provider.provides(name), f"{cls.__name__}.provides({name!r}) is False for a name it lists")
        _check_one(provider, name, batch_size, seed)


def _check_one(provider: BackboneProvider, name: str, batch_size: int, seed: int) -> None:
    who = f"{type(provider).__name__}.create({name!r})"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        made = provider.create(name)
        torch.manual_seed(seed)
        again = provider.create(name)
    _require(isinstance(made, Backbone), f"{who} must return a tlbench.Backbone, got {type(made).__name__}")
    _require(isinstance(made.network, nn.Module), f"{who}: network must be an nn.Module")
    _require(made.in_chans in (1, 3), f"{who}: in_chans must be 1 (grey) or 3 (colour), got {made.in_chans}")
    for what in ("mean", "std"):
        values = tuple(getattr(made, what))
        _require(
            len(values) == made.in_chans,
            f"{who}: {what} needs one value per input channel ({made.in_chans}), got {values}",
        )
    _require(all(s > 0 for s in made.std), f"{who}: std must be positive, got {tuple(made.std)}")
    _require(
        isinstance(provider.has_pretrained(name), bool),
        f"{type(provider).__name__}.has_pretrained({name!r}) must return True or False",
    )
    for (key, a), b in zip(made.network.state_dict().items(), again.network.state_dict().values()):
        _require(
            torch.equal(a, b),
            f"{who}: two creations under seed {seed} differ in {key}; initialise from torch's global generator only",
        )
    size = provider.input_size(name) or BACKBONE_CHECK_SIZE
    images = torch.randn(batch_size, made.in_chans, size, size, generator=torch.Generator().manual_seed(seed))
    params = dict(made.network.named_parameters())
    _check_stages(who, made, params)
    for mode in ("eval", "train"):
        made.network.train(mode == "train")
        features = made.network(images)
        _require(
            tuple(features.shape) == (batch_size, made.feature_dim),
            f"{who}: on {batch_size}x{made.in_chans}x{size}x{size} images ({mode} mode) the network returned "
            f"{tuple(features.shape)}, expected ({batch_size}, {made.feature_dim}) pooled features",
        )
        _require(bool(torch.isfinite(features).all()), f"{who}: features are not finite ({mode} mode)")
    features.float().pow(2).mean().backward()
    dead = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    _require(not dead, f"{who}: no gradient reached {dead[:3]}; every parameter must take part in the features")
    model = TransferModel(made.network, 3, bottleneck_dim=8, feature_dim=made.feature_dim, stages=made.stages)
    with torch.no_grad():
        logits = model(images)
    _require(bool(torch.isfinite(logits).all()), f"{who}: a TransferModel on it gives non-finite logits")


def _check_stages(who: str, made: Backbone, params: dict[str, nn.Parameter]) -> None:
    if made.stages is None:
        return
    _require(
        isinstance(made.stages, list) and bool(made.stages) and all(isinstance(s, list) and s for s in made.stages),
        f"{who}: stages must be a non-empty list of non-empty lists of parameter names (input side first)",
    )
    flat = [n for stage in made.stages for n in stage]
    unknown = [n for n in flat if n not in params]
    _require(
        not unknown,
        f"{who}: stages name {unknown[:3]}, which are not parameters of the network "
        f"(its names look like {list(params)[:2]})",
    )
    twice = sorted({n for n in flat if flat.count(n) > 1})
    _require(not twice, f"{who}: stages name {twice[:3]} more than once")
    missing = [n for n in params if n not in set(flat)]
    _require(not missing, f"{who}: stages leave out {missing[:3]}; unfreeze and dlr would never train them")
