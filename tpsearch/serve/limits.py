"""Request-body size limit, as ASGI middleware: a declared or streamed body over the limit is
answered 413 before the application reads any of it."""

from __future__ import annotations

import json


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        # The body is read here, up to the limit, before the application sees any of it: a
        # streamed (chunked) body over the limit is answered 413 as a declared one is, never
        # cut short inside the application's own body parsing (which would answer 400).
        messages, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                messages.append(message)
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await self._too_large(send)
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            if messages:
                return messages.pop(0)
            return await receive()  # after the body: wait for a disconnect, as the server would

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        body = json.dumps({"error": {"message": f"the request body is over {self.max_bytes} "
                                                "bytes", "type": "invalid_request_error",
                                     "param": None, "code": "body_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
