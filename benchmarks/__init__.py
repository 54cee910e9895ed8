"""Speed and accuracy benchmarks that print tables (``python -m benchmarks.NAME``).

Never timed asserts: each writes its figures (and the command that made
them) under ``benchmarks/results/``.
"""
