"""Exports for the course staff: grades CSVs, every run as JSON, Gradescope results.json, the roster over the
API, and the activity feed of an assignment."""
