"""Sandbox backends: run untrusted student code in an isolated, resource-limited process tree."""

from worker.sandbox.base import (
    SANDBOX_BACKENDS,
    Limits,
    Sandbox,
    SandboxError,
    SandboxResult,
    SandboxSession,
    SandboxSpec,
    get_sandbox,
)
from worker.sandbox.local import LocalSandbox

__all__ = [
    "SANDBOX_BACKENDS",
    "Limits",
    "LocalSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxResult",
    "SandboxSession",
    "SandboxSpec",
    "get_sandbox",
]
