"""The suites shipped with tlbench, installed as the data package ``tlbench_suites`` (YAML files, no code).

``tlbench run quickstart`` and ``tlbench list suites`` find them wherever tlbench is installed
(``tlbench.spec.shipped``).
"""
