"""Small, licence-clear inputs for tests and benchmarks.

Generated text (synthetic_text.py) and the RAG corpus and questions (*.jsonl), all written for this project.
"""
