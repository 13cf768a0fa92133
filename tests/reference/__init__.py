"""Tests for reference_impl/, the reference LLM."""
