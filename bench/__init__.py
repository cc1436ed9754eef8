"""Benchmarks for pushsvc.

Run from the repository root, e.g. ``python -m bench.fanout --help``. Every benchmark prints a
table and writes JSON under ``bench/results/``; none of them is a pytest test.
"""
