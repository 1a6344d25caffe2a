"""Data: domains and the dataset/shift contracts, the decoded-image cache, files written whole.

``domains`` (what a domain is, how a dataset plugin provides one, how ``amazon+invert:3`` parses),
``cache`` (decode once, keep uint8 tensors on disk and in memory), ``files`` (atomic writes and
sha256-checked ``torch.save`` files).
"""
