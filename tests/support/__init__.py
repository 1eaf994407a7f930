"""Helpers the test modules share, each module named for what it does (sending, routing,
waiting, rows, ...). A test module takes shared helpers from here, never from another test
module: tests/test_suite_layout.py checks it."""
