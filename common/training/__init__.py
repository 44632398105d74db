"""The training kit every model family's loop is built on: device, seeding, hooks, one AMP step,
one epoch loop (``kit``), and one checkpoint format with one resume check (``checkpoint``).
Imports no family."""
