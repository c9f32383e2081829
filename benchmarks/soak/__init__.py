"""A soak-and-chaos suite: the platform under load, faults and bad input, with a ledger of every
request sent and what became of it (see benchmarks/soak/run.py)."""
