"""Code similarity across the submissions of an assignment, for staff (issue 6)."""
