"""Evaluation reports: one self-contained HTML page (and optionally its PDF) per report job.

``page.py`` holds what a page is made of (plain data), ``plots.py`` draws figures with
matplotlib (Agg, inlined as PNG data URIs), ``stats.py`` the statistics (SciPy), ``render.py``
the Jinja2 template, ``build.py`` the page of one or several jobs from the store: the training
or inference part every job shares (``training.py``, ``inference.py``), each family's own
sections (``Family.report_sections``) and the side-by-side comparison (``compare.py``).
"""
