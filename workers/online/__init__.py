"""Online evaluation in a worker: the tick that claims sampled production runs, scoring
the claims, threshold alerts.
"""
