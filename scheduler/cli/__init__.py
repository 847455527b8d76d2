"""The `evalq` command line: one module per group of commands, the rich rendering, and
the error handling they share.
"""
