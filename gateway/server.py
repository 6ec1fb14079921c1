"""Serve the app: N worker processes sharing the port, graceful on SIGTERM.

With ``workers: 1`` the gateway runs in this process. With more, each
worker is its own process with its own event loop (uvloop) and binds the
same port with SO_REUSEPORT, so the kernel spreads connections across
them; the parent only forwards signals and waits. On SIGTERM each worker
stops accepting, lets in-flight requests finish (up to
``shutdown_timeout``), then exits.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from .auth.assertion import load_or_create_key
from .config import Config
from .logs import AccessLogger
from .logs import configure as configure_logging
from .metrics import MULTIPROC_ENV, forget, prepare_workers

log = logging.getLogger("gateway")


# glibc's mallopt() parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# What an operator may have set already (tunables or the older variables); theirs win.
_OPERATOR_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")
_OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
# How soon a quiet worker gives its freed heap back after a burst of streams.
TRIM_EVERY = 10.0


def tune_malloc() -> Callable[[], object] | None:
    """Keep relayed bodies' buffers in the heap between chunks (glibc only).

    Streaming allocates and frees blocks of 64-512 KiB many times a second.
    By default glibc maps each block that large afresh and hands the heap's
    free top back to the kernel, so every chunk paid page faults and page
    zeroing: about a fifth of the CPU of a 1 MiB transfer. Blocks under 4 MiB
    now come from the heap, and up to 16 MiB of free heap stays mapped.
    Larger blocks (argon2's 64 MiB) are still mapped and returned.

    A heap only shrinks from its top, so after a burst of streams freed
    blocks could stay resident for good: the returned ``malloc_trim`` gives
    them back, and the worker calls it every ``TRIM_EVERY`` seconds. None
    when nothing was tuned (not glibc, or the operator set these already).
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (sys.platform != "linux" or any(t in tunables for t in _OPERATOR_TUNABLES)
            or any(v in os.environ for v in _OPERATOR_VARIABLES)):
        log.debug("malloc left as configured")
        return None
    libc = ctypes.CDLL(None)
    mallopt, trim = getattr(libc, "mallopt", None), getattr(libc, "malloc_trim", None)
    if mallopt is None or trim is None:
        return None
    if not (mallopt(_M_MMAP_THRESHOLD, 4 * 2**20) and mallopt(_M_TRIM_THRESHOLD, 16 * 2**20)):
        return None
    log.debug("malloc tuned for streaming: mmap threshold 4 MiB, trim threshold 16 MiB")
    return functools.partial(trim, 0)


def run_worker(config: Config, reuse_port: bool, parent: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT, or until ``parent`` (if given) is gone."""
    trim_heap = tune_malloc()
    # Imported here so the parent of many workers stays small: it only
    # forwards signals, and every worker imports the web stack itself.
    import uvloop
    from aiohttp import web

    from .app import create_app
    from .state import GATEWAY

    configure_logging(config.log_level, config.logging.format)
    app = create_app(config)

    async def start_watchers(app: web.Application) -> None:
        # Owned by the app's background set: cancelled and awaited at cleanup.
        background = app[GATEWAY].background
        if parent is not None:
            background.spawn(_watch_parent(parent), "parent watch")
        if trim_heap is not None:
            background.spawn(_every(TRIM_EVERY, trim_heap), "heap trim")
    app.on_startup.append(start_watchers)
    host, port = config.listen
    # Metrics and the access log both hear of every answered request there.
    access = type("Access", (AccessLogger,), {"METRICS": config.metrics.enabled,
                                              "LINES": config.access_log})
    web.run_app(app, host=host, port=port, reuse_port=reuse_port or None,
                shutdown_timeout=config.shutdown_timeout, print=None,
                access_log=logging.getLogger("gateway.access")
                if config.access_log or config.metrics.enabled else None,
                access_log_class=access,
                backlog=1024, loop=uvloop.new_event_loop())


async def _watch_parent(parent: int) -> None:
    """A worker whose parent died (even by SIGKILL) shuts down gracefully."""
    while os.getppid() == parent:
        await asyncio.sleep(1)
    log.warning("the gateway's main process is gone; this worker stops")
    os.kill(os.getpid(), signal.SIGTERM)


async def _every(seconds: float, job: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(seconds)
        job()


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """Why ``host:port`` could not be bound, in a few words."""
    if exc.errno == errno.EADDRINUSE:
        return f"{host_port(host, port)} is already in use"
    return f"cannot listen on {host_port(host, port)} ({exc.strerror})"


def probe_listen(host: str, port: int) -> None:
    """Raise the OSError the workers would meet binding ``host:port``, before any starts.

    Workers bind with SO_REUSEPORT, so a port that another gateway's workers
    hold would be shared with them, silently. The probe binds without it,
    which any holder blocks; with SO_REUSEADDR like the workers, so the
    connections of a previous run still in TIME_WAIT do not.
    """
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # a family this host lacks (IPv6 off): skipped, as asyncio does
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: IPv6 only
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(sockaddr)


def serve(config: Config) -> int:
    """Raises OSError when the port cannot be bound, before anything is logged."""
    configure_logging(config.log_level, config.logging.format)
    host, port = config.listen
    probe_listen(host, port)
    # Create the assertion key once, before workers race to create it.
    load_or_create_key(config.assertion_key_file)
    log.info("gateway listening on http://%s:%d (%d worker%s, %s store), public URL %s",
             host, port, config.workers, "s" if config.workers > 1 else "",
             config.session.store, config.public_url)
    if config.workers == 1:
        # Its values live in its memory, unless the operator named a folder.
        if config.metrics.enabled and os.environ.get(MULTIPROC_ENV):
            prepare_workers()
        run_worker(config, reuse_port=False)
        return 0

    metrics_folder = prepare_workers() if config.metrics.enabled else None
    try:
        return _supervise(config)
    finally:
        forget(metrics_folder)


def _supervise(config: Config) -> int:
    """Start the workers, pass signals on, and stop them all if one dies."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=run_worker, args=(config, True, os.getpid()))
               for _ in range(config.workers)]
    for w in workers:
        w.start()
    deadline: float | None = None  # when stopping: by then every worker is gone

    def stop(signum: int, _frame: object) -> None:
        nonlocal deadline
        if deadline is None:
            deadline = time.monotonic() + config.shutdown_timeout + 5
        for w in workers:
            if w.is_alive() and w.pid:
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # If one worker dies the rest go too: a supervisor restarts a whole gateway.
    status = 0
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=0.2)
            if not w.is_alive() and w.exitcode not in (0, None) and deadline is None:
                log.error("worker %s exited with %s; stopping the gateway", w.pid, w.exitcode)
                status = 1
                stop(signal.SIGTERM, None)
        if deadline is not None and time.monotonic() > deadline:
            for w in workers:
                if w.is_alive():
                    log.error("worker %s did not stop in time; killing it", w.pid)
                    w.kill()
    return status
