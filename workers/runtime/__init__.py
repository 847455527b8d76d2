"""Process plumbing shared by the workers and the CLI: the event loop thread, secrets kept
out of logs and stored texts.
"""
