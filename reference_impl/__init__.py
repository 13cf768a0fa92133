"""The course's reference LLM implementation: the trusted side's source of expected outputs.

It depends on nothing else in this repository, so graders and tests can import any part of it on its own.
"""
