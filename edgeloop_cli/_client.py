"""How the CLI reaches a hub: in-process on a data dir, or over HTTP to a running hub.

Both go through the same admin API, so the CLI and the API cannot drift apart.
"""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from edgeloop_cli.errors import CliError


@dataclass(frozen=True, slots=True)
class Target:
    data_dir: str | None
    hub_url: str | None
    token: str | None
    verbose: bool = False  # -v: dependencies' warnings and logs too


class _Http(Protocol):
    """httpx.Client, or Starlette's in-process test client (httpx or httpx2 underneath)."""

    @property
    def base_url(self) -> Any: ...

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = ...,
        json: Any = ...,
        files: Any = ...,
        data: Any = ...,
        content: Any = ...,
    ) -> Any: ...


class HubClient:
    """A thin JSON client over the admin API (``/api/v1``)."""

    def __init__(self, *, http: _Http, before: Callable[[str], None] | None = None) -> None:
        self._http = http
        self._before = before  # in-process: include the routes ``path`` needs first

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._before is not None:
            self._before(path)
        try:
            response = self._http.request(method, "/api/v1" + path, **kwargs)
        except Exception as exc:
            # httpx only where a --hub client imported it (~0.2 s in-process, where the
            # client is Starlette's test client and nothing travels)
            httpx = sys.modules.get("httpx")
            if httpx is None or not isinstance(exc, httpx.TransportError):
                raise
            raise CliError(
                f"cannot reach the hub at {self._http.base_url} ({exc}); is `edgeloop hub serve` "
                "running, or did you mean --data-dir?",
                code="unreachable",
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                message, code = body.get("error", response.text), body.get("code", "error")
            except ValueError:
                message, code = response.text or response.reason_phrase, "http_error"
            raise CliError(message, code=code, status=response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


@contextmanager
def _no_collection() -> Iterator[None]:
    """The garbage collector off while the web stack and the hub are imported: it would walk
    every new class and schema again and again (~0.3 s of an in-process command's start).

    Where the block imported modules (the first in-process command of a process), what it
    made is frozen (``gc.freeze``: out of the collector's generations, as it lives as long
    as the process): else the first full collection after it walks all of it once more
    (~0.07 s of each command). Later blocks import nothing, so freeze nothing."""
    was_enabled = gc.isenabled()
    modules = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        if was_enabled:
            gc.enable()


@contextmanager
def connect(target: Target) -> Iterator[HubClient]:
    if target.hub_url:
        import httpx

        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        with httpx.Client(base_url=target.hub_url, headers=headers, timeout=600) as http:
            yield HubClient(http=http)
        return
    # In-process: the same app, on the data dir's database and artifacts, no network.
    with _no_collection():  # ~2,000 modules of classes that live as long as the process
        with warnings.catch_warnings():  # starlette asks for httpx2; httpx (pinned) is the same
            warnings.simplefilter("ignore", DeprecationWarning)
            from starlette.testclient import TestClient

        from hub.api import create_app, include_routes, routes_for
        from hub.core.settings import load_settings

        settings = load_settings(data_dir=target.data_dir)
        token = target.token or settings.resolved_admin_token()
        # no /ui, and only the route modules each request needs (~0.3 s of imports saved)
        app = create_app(settings, dashboard=False, routes=())

    def before(path: str) -> None:
        with _no_collection():
            include_routes(app, routes_for(path))

    with TestClient(
        app,
        base_url="http://edgeloop.local",
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {token}"},
    ) as in_process:
        yield HubClient(http=in_process, before=before)
