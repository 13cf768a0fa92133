"""The grading framework: the sandbox protocol, the runner stub, the harness and assignment packages.

Each assignment lives in its own package directory here (e.g. ``graders/warmup/``); see
docs/writing-an-assignment.md.
"""
