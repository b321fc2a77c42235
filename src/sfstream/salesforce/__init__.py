"""Salesforce specifics: channel names and stream ids (`channels`), and the REST calls we
make (`rest`, imported on demand: it needs aiohttp, which configuration checks do not)."""

from sfstream.salesforce.channels import ChannelInfo, ChannelKind, parse_channel, stream_id

__all__ = ["ChannelInfo", "ChannelKind", "parse_channel", "stream_id"]
