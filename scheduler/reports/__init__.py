"""Reports computed from the database: an experiment, a comparison, an online evaluator's
windows; the CI gate; JUnit XML and self-contained HTML renderings.
"""
