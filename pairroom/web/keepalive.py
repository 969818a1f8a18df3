"""Websocket keepalive that counts a peer's frames as signs of life, on both ``/yjs`` paths.

uvicorn pings every ``ws_ping_interval`` and closes with 1011 when no pong comes within
``ws_ping_timeout``. A client uploading faster than the room integrates (a 10 MiB document seeded
in one go) has its pong queued behind its own frames, in its send buffer and in the server's receive
buffer: every frame still arrives, and it was closed anyway, the rest of its upload lost to the room.
Here a frame received since the ping proves the peer alive, and the deadline moves on by another
timeout for as long as frames keep coming; a peer that sends nothing at all is closed as before.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class KeepaliveWhileSending(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol whose pong deadline waits while frames keep arriving."""

    __slots__ = ("heard",)

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.heard = False  # a frame came since the last ping (or the last extension of its deadline)

    def handle_events(self) -> None:
        self.heard = True
        super().handle_events()

    def send_keepalive_ping(self) -> None:
        self.heard = False
        super().send_keepalive_ping()

    def keepalive_timeout(self) -> None:
        """No pong within the timeout: close with 1011, unless the peer sent something since the
        ping; then the deadline moves on by another timeout."""
        timeout = self.ping_timeout  # set, or uvicorn would not have armed this deadline
        if self.heard and timeout is not None and not (self.close_sent or self.transport.is_closing()):
            self.heard = False
            self.pong_timer = self.loop.call_later(timeout, self.keepalive_timeout)
            return
        super().keepalive_timeout()
