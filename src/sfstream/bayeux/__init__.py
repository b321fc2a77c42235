"""The Bayeux protocol as Salesforce speaks it, without I/O.

`Session` is a state machine: given parsed server messages and the time, it returns the
messages to send, the events to deliver and the next deadline. `sfstream.client` drives it
over HTTP.
"""

from sfstream.bayeux.backoff import Backoff
from sfstream.bayeux.messages import (
    Advice,
    ChangeHeader,
    Event,
    MalformedEvent,
    MetaChannel,
    Reply,
    decode,
    parse,
)
from sfstream.bayeux.session import Session
from sfstream.bayeux.types import (
    EARLIEST,
    LATEST,
    Counters,
    EventRejected,
    Gap,
    Handshaken,
    Notice,
    Phase,
    Reauthenticate,
    Recovering,
    ReplayPolicy,
    Request,
    RequestKind,
    SessionFailed,
    Step,
    Subscribed,
    Subscription,
    SubscriptionLost,
    SubState,
    Unsubscribed,
)

__all__ = [
    "EARLIEST",
    "LATEST",
    "Advice",
    "Backoff",
    "ChangeHeader",
    "Counters",
    "Event",
    "EventRejected",
    "Gap",
    "Handshaken",
    "MalformedEvent",
    "MetaChannel",
    "Notice",
    "Phase",
    "Reauthenticate",
    "Recovering",
    "ReplayPolicy",
    "Reply",
    "Request",
    "RequestKind",
    "Session",
    "SessionFailed",
    "Step",
    "SubState",
    "Subscribed",
    "Subscription",
    "SubscriptionLost",
    "Unsubscribed",
    "decode",
    "parse",
]
