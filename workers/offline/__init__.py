"""Offline evaluation in a worker: a chunk of (item, repeat)s from the experiment's plan,
the target call (a model or a Python callable), rescoring, fail-fast.
"""
