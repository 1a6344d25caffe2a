"""Models: backbones and where their pretrained weights come from, and the transfer model.

``backbones`` (the backbone-provider contract: who creates a network by name, and what the engine
needs to know about it), ``weights`` (the weight-source contract, ``load_backbone``), ``transfer``
(backbone + bottleneck + classifier head: the one model every strategy trains).
"""
