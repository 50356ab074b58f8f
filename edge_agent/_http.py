"""The local inference endpoint: a small JSON-over-HTTP API on loopback.

* ``POST /v1/predict`` ``{"inputs": [...]}`` (one raw record or a batch, nested lists, shaped
  or flat: the rule of :mod:`edge_agent.inputs`) ->
  ``{"ids", "outputs", "labels", "scores", "model", "version", "variant", "latency_ms"}``
* ``POST /v1/feedback`` ``{"prediction_id": ..., "label": index or name}`` or
  ``{"prediction_id": ..., "value": number}`` -> 202, each with an optional ``"source"`` (the
  record the input came from); calls ``on_feedback(prediction_id=, label=, value=,
  source=)`` (label names are mapped to class indexes with the active model's labels)
* ``GET /v1/health`` -> ``{"status": "ok" | "no_model", "model", "version", ...}``

Errors are ``{"error": message, "code": code}`` like the hub's: 400 for bad JSON, shapes or
fields, 404/405, 411/413 for a missing or oversized body, 503 while no model is loaded, 500
when the runtime fails. Standard library only (``ThreadingHTTPServer`` in a daemon thread);
it binds to loopback unless ``allow_remote=True``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

import numpy as np

from edge_agent._predictor import NoModelLoaded, Prediction, PredictionError, Predictor
from edge_agent.errors import AgentError

__all__ = ["MAX_BODY_BYTES", "FeedbackHandler", "LocalApi", "is_loopback", "prediction_json"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


class FeedbackHandler(Protocol):
    """Receives ground truth for an earlier prediction (the agent forwards it to the hub)."""

    def __call__(
        self, *, prediction_id: str, label: int | None, value: float | None, source: str = ""
    ) -> None: ...


class _ApiError(AgentError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def prediction_json(prediction: Prediction) -> dict[str, Any]:
    return {
        "ids": prediction.ids,
        "outputs": prediction.outputs.tolist(),
        "labels": prediction.labels,
        "scores": None if prediction.scores is None else prediction.scores.tolist(),
        "model": prediction.model,
        "version": prediction.version,
        "variant": prediction.variant,
        "latency_ms": prediction.latency_ms,
    }


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: LocalApi

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN (a DNS query); not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Server6(_Server):
    address_family = socket.AF_INET6


class LocalApi:
    """The endpoint around a :class:`Predictor`; :meth:`start` returns the bound port."""

    def __init__(
        self,
        *,
        predictor: Predictor,
        on_feedback: FeedbackHandler | None,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"refusing to serve the inference API on {host!r}: it has no authentication, "
                "so it binds to loopback (127.0.0.1, ::1, localhost) unless allow_remote=True"
            )
        self.predictor = predictor
        self.on_feedback = on_feedback
        self.host, self.max_body_bytes, self.status = host, max_body_bytes, status
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_port

    def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("the local API is already running")
        cls = _Server6 if ":" in self.host else _Server
        server = cls((self.host, self._requested_port), _Handler)
        server.api = self
        self._server, self._started = server, time.monotonic()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"edgeloop-local-api:{server.server_port}",
        )
        self._thread.start()
        log.info("local inference API on http://%s:%d", self.host, server.server_port)
        return server.server_port

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LocalApi:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- routes ---------------------------------------------------------------------------

    def predict(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or "inputs" not in body:
            raise _ApiError(400, "invalid_input", 'expected a JSON object {"inputs": [...]}')
        try:
            x = np.asarray(body["inputs"], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise _ApiError(
                400, "invalid_input", f"inputs must be a nested list of numbers ({exc})"
            ) from exc
        if not np.isfinite(x).all():
            raise _ApiError(400, "invalid_input", "inputs must be finite numbers (no null/NaN)")
        try:
            prediction = self.predictor.predict(x)
        except NoModelLoaded as exc:
            raise _ApiError(503, "no_model", str(exc)) from exc
        except ValueError as exc:
            raise _ApiError(400, "invalid_input", str(exc)) from exc
        except PredictionError as exc:
            raise _ApiError(500, "prediction_failed", str(exc)) from exc
        return 200, prediction_json(prediction)

    def feedback(self, body: Any) -> tuple[int, dict[str, Any]]:
        if self.on_feedback is None:
            raise _ApiError(501, "not_configured", "this agent does not take feedback")
        if not isinstance(body, dict):
            raise _ApiError(400, "invalid_input", "expected a JSON object")
        pid = body.get("prediction_id")
        if not isinstance(pid, str) or not pid:
            raise _ApiError(400, "invalid_input", "prediction_id must be a non-empty string")
        if ("label" in body) == ("value" in body):
            raise _ApiError(400, "invalid_input", 'give exactly one of "label" or "value"')
        label, value = None, None
        if "label" in body:
            label = self._label_index(body["label"])
        else:
            raw = body["value"]
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise _ApiError(400, "invalid_input", "value must be a finite number")
            value = float(raw)
        source = body.get("source", "")
        if not isinstance(source, str) or len(source) > 128:
            raise _ApiError(400, "invalid_input", "source must be a string of at most 128 chars")
        try:
            self.on_feedback(prediction_id=pid, label=label, value=value, source=source)
        except ValueError as exc:
            raise _ApiError(400, "invalid_input", str(exc)) from exc
        return 202, {"accepted": True, "prediction_id": pid}

    def _label_index(self, label: Any) -> int:
        if isinstance(label, int) and not isinstance(label, bool) and label >= 0:
            return label
        model = self.predictor.model
        names = model.labels if model is not None else None
        if isinstance(label, str) and names and label in names:
            return names.index(label)
        known = f"; labels: {list(names)}" if names else ""
        raise _ApiError(400, "invalid_input", f"label must be a class index or a label name{known}")

    def health(self) -> tuple[int, dict[str, Any]]:
        model, stats = self.predictor.model, self.predictor.stats()
        extra = dict(self.status()) if self.status is not None else {}
        shadow = self.predictor.shadow
        body: dict[str, Any] = {
            "status": "no_model" if model is None else "ok",
            "model": None if model is None else model.name,
            "version": None if model is None else model.version,
            "variant": None if model is None else model.variant_file,
            "runtime": None if model is None else model.runtime.name,
            "shadow": None if shadow is None else shadow.ref,
            "predictions": stats.calls,
            "errors": stats.errors,
            "uptime_s": round(time.monotonic() - self._started, 3),
            **extra,
        }
        return (503 if model is None else 200), body


_ROUTES: dict[str, dict[str, Callable[[LocalApi, Any], tuple[int, dict[str, Any]]]]] = {
    "/v1/predict": {"POST": LocalApi.predict},
    "/v1/feedback": {"POST": LocalApi.feedback},
    "/v1/health": {"GET": lambda api, _body: api.health()},
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a local client reuses its connection
    server_version = "edgeloop-agent"
    timeout = 30  # a stalled client gives its thread back

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        api = cast(_Server, self.server).api
        path = self.path.split("?", 1)[0]
        try:
            body = None
            if method in ("POST", "PUT"):
                body = self._read_json(api.max_body_bytes)
            elif self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a body nobody reads: don't reuse the stream
            route = _ROUTES.get(path)
            if route is None:
                raise _ApiError(404, "not_found", f"no route {path}; see {sorted(_ROUTES)}")
            handler = route.get(method)
            if handler is None:
                raise _ApiError(405, "method_not_allowed", f"{path} takes {sorted(route)}")
            status, payload = handler(api, body)
        except _ApiError as exc:
            status, payload = exc.status, {"error": exc.message, "code": exc.code}
        except Exception:
            log.exception("local API: %s %s failed", method, path)
            status, payload = (
                500,
                {"error": "internal error (see the agent log)", "code": "internal"},
            )
        self._send(status, payload)

    def _read_json(self, limit: int) -> Any:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _ApiError(411, "length_required", "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise _ApiError(411, "length_required", "Content-Length is required") from None
        if length < 0 or length > limit:
            self.close_connection = True  # the body stays unread
            raise _ApiError(413, "too_large", f"the body is over the limit of {limit} bytes")
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            raise _ApiError(400, "invalid_json", "the body ended early")
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
