"""The data model: what a run is made of, typed from the suite file to the records and back.

Suite and recipe (``suite``, ``recipe``, ``loading``), sweeps, cells and their expansion, the plan of a run
(``plan``), records and the results folder that keeps them (``record``, ``store``), and the suite summary
that reports read (``summary``). It sits above ``data`` and ``models`` and below ``training``, ``reporting``
and the driver (``tlbench.matrix``); docs/architecture.md draws the layers.
"""
