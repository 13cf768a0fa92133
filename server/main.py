"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.assignments.router import router as assignments_router
from server.auth.router import router as auth_router
from server.db import get_session_factory
from server.errors import DomainError
from server.exports.router import router as exports_router
from server.health import router as health_router
from server.leaderboard.alias_router import router as alias_router
from server.leaderboard.router import router as leaderboard_router
from server.pages.errors import error_page, wants_page
from server.pages.render import STATIC_DIR
from server.pages.router import router as pages_router
from server.pages.staff import router as staff_pages_router
from server.pages.student import router as student_pages_router
from server.policy.router import router as policy_router
from server.rubrics.router import router as rubrics_router
from server.settings import Settings, get_settings
from server.similarity.router import router as similarity_router
from server.submissions.router import router as submissions_router
from server.submissions.sweeper import SweeperThread

log = logging.getLogger(__name__)


class BodySizeLimit:
    """Refuses request bodies over ``limit`` bytes while they stream in, before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {
                "detail": f"The request body is larger than the server's limit of {self.limit // 2**20} MiB.",
                "code": "too_large",
            },
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(settings: Settings | None = None, *, run_sweeper: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = None
        if run_sweeper and settings.broker.sweep_interval_seconds > 0:
            sweeper = SweeperThread(
                get_session_factory(),
                interval=settings.broker.sweep_interval_seconds,
                requeue_after_seconds=settings.broker.requeue_after_seconds,
                max_attempts=settings.worker.max_attempts,
            )
            sweeper.start()
        yield
        if sweeper is not None:
            sweeper.stop()

    app = FastAPI(
        title="LLM course autograder",
        version="0.1.0",
        description="Submit code, follow its grading live, read per-test feedback and the leaderboards.",
        lifespan=lifespan,
    )

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        if wants_page(request):
            return await run_in_threadpool(error_page, request, exc.status_code, exc.message)
        return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if wants_page(request):
            return await run_in_threadpool(error_page, request, exc.status_code, None)
        return JSONResponse({"detail": exc.detail, "code": "http_error"}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        if wants_page(request):
            return await run_in_threadpool(error_page, request, 500, None)
        return JSONResponse({"detail": "Internal server error.", "code": "internal"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        return JSONResponse(
            {"detail": "The request is not valid: " + "; ".join(problems), "code": "invalid"}, status_code=422
        )

    for router in (
        pages_router,
        student_pages_router,
        staff_pages_router,
        health_router,
        auth_router,
        assignments_router,
        submissions_router,
        rubrics_router,
        policy_router,
        leaderboard_router,
        alias_router,
        similarity_router,
        exports_router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodySizeLimit, limit=settings.uploads.max_request_bytes)
    return app
