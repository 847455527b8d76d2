"""Production runs in: the validated run shape, files (`evalq ingest`), the Python API
(`record_run`) and the HTTP server (`evalq serve`).
"""
