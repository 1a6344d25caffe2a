"""The driver: runs a planned matrix (lock, preflight, resume, launchers, trackers) and writes its records.

The data model it drives (suites, cells, plans, records) is :mod:`tlbench.spec`.
"""
