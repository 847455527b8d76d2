"""Offline experiments: reading a dataset file, enqueueing (broker or embedded thread pool),
waiting, re-runs, and who is doing the work.
"""
