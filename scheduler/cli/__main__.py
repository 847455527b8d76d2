"""`python -m scheduler.cli`: the same as the `evalq` command."""

from scheduler.cli.main import main

main()
