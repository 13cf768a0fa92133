"""Attack tests for the sandbox backends."""
