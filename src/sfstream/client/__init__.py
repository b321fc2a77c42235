"""The Streaming API client: the only module that does CometD I/O."""

from sfstream.client.streaming import ClientSettings, ClientStats, StreamingClient, StreamItem

__all__ = ["ClientSettings", "ClientStats", "StreamItem", "StreamingClient"]
