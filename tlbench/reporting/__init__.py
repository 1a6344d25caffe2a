"""Reporting: records → a leaderboard → every reporter plugin's files.

``leaderboard`` (the pure function from records to tables: mean ± std, ranks, costs, references),
the ``reporter`` contract, and ``write`` (a results directory, or several merged, in every format).
"""
