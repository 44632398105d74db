"""Shared code of medq: settings, results store, and the model engines.

Never imports celery or click; the store and settings modules never import torch.
"""

import os

__version__ = "0.1.0"

# medq sends nothing off the machine at run time. albumentations asks PyPI for a newer version
# when it is imported unless this is set (workers on hospital networks have no route out, and
# the lookup would stall every worker start on a DNS timeout).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
