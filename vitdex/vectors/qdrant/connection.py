"""The client a Qdrant store talks through, and every request retried the same way.

``url`` gives a store its own client of a server (or cluster). ``path`` uses
qdrant-client's local mode, which locks its folder per client, so every store of one
folder in a process shares one client, counted, and closed with the last of them; that
client is not safe to call from two threads at once, so its calls are serialised.

Every request vitdex sends is idempotent (upserts by id, deletes by id, reads), so one
that failed in transit (network errors, timeouts, 5xx, 429) is repeated with exponential
backoff; anything else is the request's fault and becomes a :class:`StoreError` at once.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vitdex.errors import StoreError

__all__ = ["Connection", "missing_point"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_RETRIES = 5
_BACKOFF_S = 0.2
_BACKOFF_MAX_S = 5.0


@dataclass
class _Shared:
    """One local-mode client per folder: qdrant-client locks the folder per client."""

    client: QdrantClient
    lock: threading.RLock = field(default_factory=threading.RLock)
    refs: int = 0


_LOCAL: dict[str, _Shared] = {}
# Re-entrant: a store dropped unclosed gives its client back from __del__, which the
# garbage collector may run while this thread holds the lock (inside _acquire_local).
_LOCAL_LOCK = threading.RLock()


def _acquire_local(path: Path) -> _Shared:
    key = os.path.realpath(path)
    with _LOCAL_LOCK:
        shared = _LOCAL.get(key)
        if shared is None:
            Path(key).mkdir(parents=True, exist_ok=True)
            try:
                client = QdrantClient(path=key)
            except RuntimeError as exc:  # the folder is locked by another process
                raise StoreError(f"cannot open the Qdrant folder {key}: {exc}") from exc
            shared = _LOCAL[key] = _Shared(client)
        shared.refs += 1
        return shared


def _release_local(path: Path, shared: _Shared) -> None:
    key = os.path.realpath(path)
    with _LOCAL_LOCK:
        shared.refs -= 1
        if shared.refs <= 0:
            if _LOCAL.get(key) is shared:
                del _LOCAL[key]
            with shared.lock:
                shared.client.close()


def _transient(exc: BaseException) -> bool:
    """Whether retrying the same request may succeed (network, timeouts, 5xx, 429)."""
    if isinstance(exc, ResourceExhaustedResponse):
        return True
    if isinstance(exc, UnexpectedResponse):
        code = exc.status_code
        return code is None or code >= 500 or code == 429
    if isinstance(exc, ResponseHandlingException):
        # Wraps what httpx raised while sending; a response it could not parse is no
        # network hiccup.
        return isinstance(exc.source, httpx.TransportError | OSError | TimeoutError)
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


def missing_point(exc: BaseException) -> bool:
    """``update_vectors`` named a point that is gone (local mode: KeyError; server: 404)."""
    if isinstance(exc, KeyError):
        return True
    return isinstance(exc, UnexpectedResponse) and exc.status_code == 404


class Connection:
    """The client of the store of ``collection``: exactly one of ``url`` or ``path``.

    Connects on the first :meth:`client` call; :meth:`release` lets the client go (the
    next call connects again). Not locked by itself: the store calls it holding its lock,
    except :meth:`call`, which concurrent searches share.
    """

    def __init__(
        self,
        collection: str,
        *,
        url: str | None,
        api_key: str | None,
        path: Path | None,
        timeout: float,
    ) -> None:
        self.collection = collection
        self.url = url
        self.path = path
        self.timeout = timeout
        self._api_key = api_key
        self._client: QdrantClient | None = None
        self._shared: _Shared | None = None

    @property
    def connected(self) -> bool:
        """Whether a client is held."""
        return self._client is not None

    def client(self) -> QdrantClient:
        """The client, connecting first if none is held."""
        if self._client is None:
            if self.path is not None:
                self._shared = _acquire_local(self.path)
                self._client = self._shared.client
            else:
                self._client = QdrantClient(
                    url=self.url, api_key=self._api_key, timeout=math.ceil(self.timeout)
                )
        return self._client

    def release(self) -> None:
        """Close the client, or give the shared local-mode client back."""
        shared, self._shared = self._shared, None
        client, self._client = self._client, None
        if shared is not None and self.path is not None:
            _release_local(self.path, shared)
        elif client is not None:
            client.close()

    def call(
        self,
        what: str,
        fn: Callable[..., _T],
        *,
        passthrough: Callable[[BaseException], bool] | None = None,
        **kwargs: Any,
    ) -> _T:
        """Run one request, retrying transient failures with exponential backoff.

        Other failures become :class:`StoreError` naming ``what`` and the collection,
        except those ``passthrough`` accepts, which are raised as they are.
        """
        delay = _BACKOFF_S
        shared = self._shared
        for attempt in range(_RETRIES + 1):
            try:
                if shared is not None:
                    # Stores of several spaces share one local-mode client, which is not
                    # safe to call from two threads at once.
                    with shared.lock:
                        return fn(**kwargs)
                return fn(**kwargs)
            except Exception as exc:
                if passthrough is not None and passthrough(exc):
                    raise
                if not _transient(exc) or attempt == _RETRIES:
                    raise StoreError(
                        f"Qdrant {what} on collection {self.collection!r} failed: "
                        f"{str(exc).strip() or type(exc).__name__}"
                    ) from exc
                wait = delay * random.uniform(0.5, 1.0)
                if isinstance(exc, ResourceExhaustedResponse):
                    wait = max(wait, float(exc.retry_after_s))
                log.warning(
                    "Qdrant %s failed (%s); retry %d of %d in %.1f s",
                    what,
                    type(exc).__name__,
                    attempt + 1,
                    _RETRIES,
                    wait,
                )
                time.sleep(wait)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        raise AssertionError("unreachable")  # pragma: no cover
