"""A value resident on a server, as a node of the client's graph holds it.

The client names each resident value with an id of its own choosing, so a plan, its outputs and
later references to them travel in one message. When the last reference to a ``RemoteValue``
goes, its id is queued on the connection and freed on the server with the next message.
"""

from __future__ import annotations


class RemoteValue:
    __slots__ = ("conn", "id", "__weakref__")
    live = 0  # RemoteValues alive in this process: local execution looks for them only when there are any

    def __init__(self, conn, id: int):
        self.conn = conn
        self.id = id
        RemoteValue.live += 1

    def fetch(self):
        """The value, copied to this process (a plain CPU tensor)."""
        return self.conn.fetch(self)

    def __del__(self):
        try:
            RemoteValue.live -= 1
            self.conn.release(self.id)
        except (AttributeError, TypeError):  # interpreter shutdown: module globals are gone
            pass

    def __repr__(self) -> str:
        return f"<RemoteValue {self.id} on {getattr(self.conn, 'address', '?')}>"
