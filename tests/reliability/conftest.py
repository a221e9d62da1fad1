"""Fixtures of the reliability tests: ``make_server`` and ``default_model`` come from
``tests/conftest.py``; the servers and the helpers that read jobs and stores from
``tests/harness.py``."""
