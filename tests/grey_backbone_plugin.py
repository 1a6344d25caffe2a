"""A third-party backbone provider, loaded through ``$TLBENCH_PLUGINS`` by tests/test_backbones.py:
one grey-input network whose two stages are named, trained from scratch."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from tlbench import Backbone, BackboneProvider, filter_names, hookimpl


class GreyNets(BackboneProvider):
    """One tiny grey-digit CNN for the tests, trained from scratch."""

    name = "grey_nets"

    def names(self, pattern=None, *, pretrained=False):
        return [] if pretrained else filter_names(["grey_cnn"], pattern)

    def input_size(self, name):
        return 16

    def create(self, name):
        network = nn.Sequential(
            OrderedDict(
                conv=nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU()),  # 8x8
                fc=nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 12), nn.ReLU()),
            )
        )
        stages = [[f"{block}.{p}" for p, _ in m.named_parameters()] for block, m in network.named_children()]
        return Backbone(network, 12, in_chans=1, mean=(0.5,), std=(0.5,), stages=stages)


@hookimpl
def register_backbones(register):
    register(GreyNets)
