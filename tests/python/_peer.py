"""Shared helpers of the Python peers the interoperability tests run.

Every peer uses the real service_framework 0.0.18 connection classes (which build their
sockets with service_framework.utils.socket_utils and frame messages with msgpack_utils), so
what reaches the Rust side is exactly what a 0.0.18 service puts on the wire.

Protocol with the Rust test: a first stdout line `READY <json>` once the socket is set up, then
one JSON object per line. Every peer ends on its own: bounded loops, receive timeouts, and an
alarm as a last resort.
"""

import json
import signal
import uuid
from decimal import Decimal

import numpy
import zmq
from service_framework.connections.out.publisher import Publisher
from service_framework.utils.connection_utils import get_connection
from service_framework.utils.msgpack_utils import msg_unpack  # noqa: F401 (used by the peers)


def start(max_seconds=20):
    """Kills this process after max_seconds whatever happens (a test must never hang)."""
    signal.alarm(max_seconds)


def ready(**info):
    print('READY ' + json.dumps(info), flush=True)


def emit(event, **fields):
    print(json.dumps({'event': event, **fields}), flush=True)


def jsonable(value):
    """Decoded msgpack payload -> JSON, keeping the Python types visible to the Rust test."""
    if isinstance(value, uuid.UUID):
        return {'$uuid': str(value)}
    if isinstance(value, Decimal):
        return {'$decimal': str(value)}
    if isinstance(value, (set, frozenset)):
        return {'$set': sorted((jsonable(v) for v in value), key=repr)}
    if isinstance(value, numpy.ndarray):
        return {'$ndarray': value.tolist(), 'dtype': str(value.dtype)}
    if isinstance(value, bytes):
        return {'$bytes': value.hex()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def set_timeout(socket, ms):
    socket.setsockopt(zmq.RCVTIMEO, ms)
    socket.setsockopt(zmq.LINGER, 500)


def connection(side, model, addresses):
    """A real 0.0.18 connection (validated, runtime_setup done)."""
    return get_connection(model, side, addresses)
