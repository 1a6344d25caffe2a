"""tlbench's built-in plugins.

Each module here is one plugin, declared under ``[project.entry-points.tlbench]`` in
pyproject.toml and loaded exactly like a third party's. They import only ``tlbench``'s
public API (``from tlbench import ...``), which makes them proof that a third party can
do the same.
"""
