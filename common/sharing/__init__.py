"""Sharing GPUs between projects: names, shares and quotas (``projects``) and the pure policy
that says what runs next and what yields (``policy``). Torch-free, Celery-free, store-free."""
