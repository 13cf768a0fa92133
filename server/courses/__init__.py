"""courses domain."""
