"""What ``vitdex serve`` hands uvicorn, by import string.

The command line does not import the API (they are separate edges, see DESIGN.md), and
uvicorn starts each worker process afresh from import strings anyway: the app factory,
``vitdex.api.app:create_app``, and the HTTP protocol below.
"""

from __future__ import annotations

from typing import Any

from vitdex.api.protocol import http_protocol

#: uvicorn's HTTP protocol answering the requests it refuses in the API's JSON error
#: body: httptools' when installed, else h11's.
HTTP_PROTOCOL: type[Any] = http_protocol()
