"""Salesforce specifics: channel names and stream ids, and the REST calls we make."""

from sfstream.salesforce.channels import ChannelInfo, ChannelKind, parse_channel, stream_id
from sfstream.salesforce.rest import NotFoundError, RestClient

__all__ = [
    "ChannelInfo",
    "ChannelKind",
    "NotFoundError",
    "RestClient",
    "parse_channel",
    "stream_id",
]
