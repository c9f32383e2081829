"""A soak-and-chaos suite: the platform under load, faults and bad input, with a ledger of every
request sent and what became of it (`python -m benchmarks.soak`, see its __main__.py)."""
