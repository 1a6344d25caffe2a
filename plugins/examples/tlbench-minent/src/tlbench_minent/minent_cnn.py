"""``minent_cnn``: a small convolutional network for any image size, as a third-party backbone.

It shows the backbone contract end to end: a provider that creates a network by name, declares
its feature size, input channels, normalisation and stages, and says it has no pretrained weights
(so suites name it with ``weights: random``). Global average pooling makes it accept any size.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from tlbench import Backbone, BackboneProvider, filter_names, hookimpl

#: network name -> widths of its two convolution stages
WIDTHS = {"minent_cnn": (16, 32)}


def _stage(n_in: int, n_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU()
    )


class MinentNets(BackboneProvider):
    """Small colour CNNs trained from scratch: two conv stages, global average pooling."""

    name = "minent_nets"

    def names(self, pattern=None, *, pretrained=False):
        return [] if pretrained else filter_names(list(WIDTHS), pattern)

    def create(self, name):
        w1, w2 = WIDTHS[name]
        network = nn.Sequential(
            OrderedDict(
                stem=_stage(3, w1, 1),
                body=nn.Sequential(_stage(w1, w2, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            )
        )
        stages = [[f"{block}.{p}" for p, _ in module.named_parameters()] for block, module in network.named_children()]
        return Backbone(network, w2, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), stages=stages)


@hookimpl
def register_backbones(register):
    register(MinentNets)
