"""Models: backbones and where their pretrained weights come from, and the transfer model.

``weights`` (the weight-source contract, ``create_backbone``), ``transfer`` (backbone +
bottleneck + classifier head: the one model every strategy trains).
"""
