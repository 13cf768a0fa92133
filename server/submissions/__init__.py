"""Submissions: upload, storage, status and results."""
