"""The Celery side of medq: app, configuration, routing and the (thin) task definitions.

The only package that imports celery. Tasks never import torch at module level, so a worker's
parent process stays free of CUDA.
"""
