"""The model families: one folder each, registered by job kind in ``registry.py``."""
