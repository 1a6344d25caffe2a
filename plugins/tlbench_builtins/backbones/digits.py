"""``digits``: the small networks the digit domain-adaptation papers train from scratch.

- ``lenet``: the LeNet variant of ADDA (Tzeng et al., CVPR 2017, Sec. 5.1) and TLlib's
  ``lenet`` — conv 5×5 20, max-pool, conv 5×5 50, dropout, max-pool, fc 500; one grey channel at
  28×28 (MNIST↔USPS).
- ``dann_mnist``: the MNIST architecture of Ganin et al. (JMLR 2016, "Domain-adversarial
  training of neural networks", Sec. 5.2.2 and Fig. 4) — conv 5×5 32, max-pool, conv 5×5 48,
  max-pool; the 768 features (48×4×4) at 28×28 are where their domain classifier attaches; colour
  input (MNIST→MNIST-M).
- ``dtn``: TLlib's ``dtn`` for SVHN→MNIST (after the DTN of Taigman et al., ICLR 2017) — three
  stride-2 conv 5×5 layers (64, 128, 256) with BatchNorm and dropout, fc 512; colour at 32×32.

None has pretrained weights: suites name them with ``weights: random``. Every network reads
images normalised with mean 0.5 and std 0.5 per channel (TLlib's digits scripts,
``--norm-mean 0.5 --norm-std 0.5``); the engine averages the stored three channels to grey for
``lenet`` (its ``in_chans`` is 1), so one suite can feed it grey and colour domains alike.
Each top-level block is one stage (input side first), which ``unfreeze`` and ``dlr`` group.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from tlbench import Backbone, BackboneProvider, UserError, filter_names, hookimpl


@dataclass(frozen=True)
class DigitNet:
    """One network: how to build its blocks, and what it reads and returns."""

    build: Callable[[], OrderedDict[str, nn.Module]]
    feature_dim: int
    in_chans: int
    input_size: int


def _lenet() -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU()),
        conv2=nn.Sequential(nn.Conv2d(20, 50, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU()),
        fc=nn.Sequential(nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Dropout(0.5)),
    )


def _dann_mnist() -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2)),
        conv2=nn.Sequential(nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()),
    )


def _dtn() -> OrderedDict[str, nn.Module]:
    def conv(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(n_in, n_out, 5, stride=2, padding=2), nn.BatchNorm2d(n_out), nn.Dropout2d(dropout), nn.ReLU()
        )

    return OrderedDict(
        conv1=conv(3, 64, 0.1),
        conv2=conv(64, 128, 0.3),
        conv3=conv(128, 256, 0.5),
        fc=nn.Sequential(nn.Flatten(), nn.Linear(256 * 4 * 4, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.5)),
    )


NETWORKS: dict[str, DigitNet] = {
    "lenet": DigitNet(_lenet, feature_dim=500, in_chans=1, input_size=28),
    "dann_mnist": DigitNet(_dann_mnist, feature_dim=48 * 4 * 4, in_chans=3, input_size=28),
    "dtn": DigitNet(_dtn, feature_dim=512, in_chans=3, input_size=32),
}


class DigitNetworks(BackboneProvider):
    """The digit papers' networks, trained from scratch: lenet (ADDA), dann_mnist (Ganin et al.), dtn (TLlib)."""

    name = "digits"
    priority = 50

    def names(self, pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
        return [] if pretrained else filter_names(list(NETWORKS), pattern)

    def input_size(self, name: str) -> int | None:
        return self._net(name).input_size

    def create(self, name: str) -> Backbone:
        net = self._net(name)
        network = nn.Sequential(net.build())
        cast(Any, network).num_features = net.feature_dim  # a plain int attribute, as timm's networks have
        stages = [[f"{block}.{p}" for p, _ in module.named_parameters()] for block, module in network.named_children()]
        half = (0.5,) * net.in_chans
        return Backbone(network, net.feature_dim, in_chans=net.in_chans, mean=half, std=half, stages=stages)

    def _net(self, name: str) -> DigitNet:
        if name not in NETWORKS:
            raise UserError(f"backbone provider 'digits' has no network {name!r}; one of: {', '.join(NETWORKS)}")
        return NETWORKS[name]


@hookimpl
def register_backbones(register):
    register(DigitNetworks)
