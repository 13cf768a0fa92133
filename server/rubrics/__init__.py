"""Staff grading by rubric: criteria come from the package, points and comments from the TAs."""
