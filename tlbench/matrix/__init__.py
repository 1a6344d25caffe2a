"""The matrix: a suite expanded into cells, run by a launcher, recorded in a results directory.

``suite`` (the YAML schema) → ``cells`` (expansion, hashed ids, kd teachers first) → ``runner``
(lock, preflight, skip what is done, launch the rest) with the ``launcher`` contract → ``results``
(records, ``results.csv``/``.jsonl``).
"""
