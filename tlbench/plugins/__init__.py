"""The plugin system, the bottom layer: hook specs and the registry.

``hookspecs`` says what a plugin can add; ``registry`` finds plugins through the ``tlbench`` entry
points, remembers which plugin registered which name, and looks names up. It imports nothing of
tlbench above it: each kind's contract (``Strategy``, ``Dataset``, ...) lives with the part of the
flow that uses it and subclasses :class:`tlbench.plugins.registry.Plugin`.
"""
