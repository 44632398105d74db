"""The end-to-end tests' fixtures (``cluster``, ``dataset``) live in tests/conftest.py, shared with
the fault-injection suite."""
