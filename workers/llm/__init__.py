"""Model calls: litellm with one retry policy, the shared rate limit, the response
cache and the built-in `evalq/toy` model.
"""
