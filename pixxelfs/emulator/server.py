"""Running the emulator: inside a trio nursery (:func:`serve_emulator`) or in a background thread
(:func:`running_emulator`), behind the thread-safe :class:`Emulator` handle.

hypercorn's trio worker serves the app on a real loopback socket, so clients exercise genuine
connection handling (keep-alive, streaming, resets), which an in-memory ASGI transport cannot.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from pixxelfs.emulator.app import build_app
from pixxelfs.emulator.config import EmulatorConfig
from pixxelfs.emulator.faults import FaultPlan
from pixxelfs.emulator.hostile import HostilePlan
from pixxelfs.emulator.state import EmulatorState
from pixxelfs.emulator.stats import Stats

log = logging.getLogger(__name__)

T = TypeVar("T")


class Emulator:
    """A running emulator. Methods may be called from any thread (they hop into its trio loop)."""

    def __init__(self, state: EmulatorState, base_url: str, token: trio.lowlevel.TrioToken) -> None:
        self.state = state
        self.base_url = base_url
        self.config = state.config
        self.api_key = state.config.api_key
        self._token = token
        self._loop_thread = threading.get_ident()

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if threading.get_ident() == self._loop_thread:
            return fn(*args)
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def package_path(self, catalog_id: str) -> Path:
        """The scene's current package on disk, built if needed (from a non-loop thread)."""
        info = trio.from_thread.run(self.state.packages.ensure, catalog_id, trio_token=self._token)
        return info.path

    async def apackage_path(self, catalog_id: str) -> Path:
        """:meth:`package_path` for code running in the emulator's own trio loop."""
        return (await self.state.packages.ensure(catalog_id)).path

    def catalog_ids(self) -> list[str]:
        return self._call(lambda: [s.id for s in self.state.world.scenes])

    def set_faults(self, plan: FaultPlan) -> None:
        self._call(self.state.faults.set, plan)

    def clear_faults(self) -> None:
        self._call(self.state.faults.set, FaultPlan())

    def set_hostile(self, plan: HostilePlan) -> None:
        self._call(setattr, self.state, "hostile", plan)

    def clear_hostile(self) -> None:
        self._call(setattr, self.state, "hostile", HostilePlan())

    def revoke_urls(self) -> None:
        """Every signed URL issued so far answers 403 from now on, as if it had expired."""
        self._call(self.state.revoke_urls)

    def stats(self) -> dict[str, Any]:
        return self._call(lambda: self.state.stats.to_json())

    def reset_stats(self) -> None:
        self._call(setattr, self.state, "stats", Stats())

    def replace_package(self, catalog_id: str) -> int:
        """Bump the scene's package version (new bytes and ETag on next build); returns it."""
        return self._call(self.state.packages.replace, catalog_id)

    def add_scenes(self, count: int) -> list[str]:
        return self._call(lambda: [s.id for s in self.state.world.add_scenes(count)])

    def remove_scene(self, catalog_id: str) -> None:
        self._call(self.state.world.remove_scene, catalog_id)


def _hypercorn_config(config: EmulatorConfig) -> HypercornConfig:
    hconfig = HypercornConfig()
    hconfig.bind = [f"{config.host}:{config.port}"]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")  # into our logging, not raw stderr
    hconfig.graceful_timeout = 1.0
    hconfig.keep_alive_timeout = 30.0
    return hconfig


@contextlib.contextmanager
def _cache_dir(config: EmulatorConfig) -> Iterator[Path]:
    if config.data_dir is not None:
        cache = config.data_dir / ".pixxelfs-emulator-cache"
        cache.mkdir(parents=True, exist_ok=True)
        yield cache
        return
    with tempfile.TemporaryDirectory(prefix="pixxelfs-emulator-") as tmp:
        yield Path(tmp)


@contextlib.asynccontextmanager
async def serve_emulator(config: EmulatorConfig) -> AsyncIterator[Emulator]:
    """Serve in the current trio loop until the block exits."""
    with _cache_dir(config) as cache:
        state = EmulatorState.create(config, cache)
        app = build_app(state)
        async with trio.open_nursery() as nursery:
            state.nursery = nursery
            stop = trio.Event()
            binds = await nursery.start(
                lambda task_status: serve(
                    app,
                    _hypercorn_config(config),
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            base_url = binds[0]
            state.public_url = (config.public_url or base_url).rstrip("/")
            log.info("emulator listening on %s", base_url)
            try:
                yield Emulator(state, base_url, trio.lowlevel.current_trio_token())
            finally:
                stop.set()
                nursery.cancel_scope.deadline = trio.current_time() + 5.0


@contextlib.contextmanager
def running_emulator(config: EmulatorConfig | None = None) -> Iterator[Emulator]:
    """Serve from a background thread (its own ``trio.run``) for synchronous callers and tests."""
    config = config or EmulatorConfig()
    ready: queue.Queue[Emulator | BaseException] = queue.Queue()
    stop: list[Callable[[], None]] = []

    async def main() -> None:
        done = trio.Event()
        async with serve_emulator(config) as emulator:
            stop.append(lambda: trio.from_thread.run_sync(done.set, trio_token=emulator._token))
            ready.put(emulator)
            await done.wait()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            ready.put(exc)

    thread = threading.Thread(target=thread_main, name="pixxelfs-emulator", daemon=True)
    thread.start()
    started = ready.get()
    if isinstance(started, BaseException):
        thread.join()
        raise RuntimeError("the emulator failed to start") from started
    try:
        yield started
    finally:
        stop[0]()
        thread.join(timeout=30)
