"""uvicorn's HTTP protocol with the API's JSON error body.

A request uvicorn cannot parse (a malformed ``Content-Length``, a broken header, body
bytes past the declared length on a kept-alive connection) never reaches the app: uvicorn
answers it itself with ``text/plain`` "Invalid HTTP request received.". These classes
answer the same 400 in the documented ``{"status_code", "detail"}`` JSON.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def error_body(status: int, detail: str) -> bytes:
    """The API's error body (as :func:`vitdex.api.errors.error_response` writes it)."""
    return json.dumps({"status_code": status, "detail": detail}).encode()


class JSONErrorsH11Protocol(H11Protocol):
    """The h11 protocol (the one uvicorn always has) answering bad requests in JSON."""

    def send_400_response(self, msg: str) -> None:
        """Answer 400 in JSON and close the connection, as uvicorn does in plain text."""
        body = error_body(400, msg)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers)))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def http_protocol() -> type[Any]:
    """The protocol class ``vitdex serve`` hands to uvicorn.

    httptools, when installed, parses faster; its subclass answers in JSON too.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return JSONErrorsH11Protocol

    class JSONErrorsHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = error_body(400, msg)
            head = (
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            self.transport.write(head + body)
            self.transport.close()

    return JSONErrorsHttpToolsProtocol
