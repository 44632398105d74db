"""Shared code of medq: settings, results store, and the model engines.

Never imports celery or click; the store and settings modules never import torch.
"""

__version__ = "0.1.0"
