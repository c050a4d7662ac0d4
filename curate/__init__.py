"""curate: distributed curation of image-text training pools.

Stages annotate a pool with uid-keyed columns; only the subset step selects rows.
See README.md for the architecture and DESIGN.md semantics each stage reproduces.
"""

__version__ = "0.1.0"
