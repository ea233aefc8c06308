"""Standalone scripts (checkpoint synthesis, training recipes, benchmarks); importable by the tests."""
