"""Unit tests: fast, no services, no network."""
