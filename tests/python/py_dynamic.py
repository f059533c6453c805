"""A Python 0.0.18 requester that sends every custom kind msgpack_utils encodes (a numpy
array, a Decimal, a set, a UUID) plus raw bytes and plain values to a replyer at ADDR
(host:port) that echoes its args as {echoed: args}, and checks that what comes back decodes
to the same Python values, of the same types.

  py_dynamic.py ADDR            echo: send the values, compare {echoed}
  py_dynamic.py ADDR state      a mirror's get_state: ask (again, up to 8 s) until its
                                {state} holds the values, then compare

Prints one `reply` line: {"event": "reply", "same": bool, "mismatches": [...], "reply": ...},
or `timeout` and exits 1.
"""

import sys
import time
import uuid
from decimal import Decimal

import numpy
import zmq
import _peer


def sent_values():
    return {
        'arr': numpy.array([1.5, -2.25, 1e300]),
        'dec': Decimal('1.10'),
        'set': {1, 2, 3},
        'uuid': uuid.UUID('0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c'),
        'raw': b'\x00\xff\x07',
        'plain': {'n': -3, 'f': 2.5, 's': 'text', 'l': [1, 'a', None], 'big': 2 ** 64 - 1},
    }


def compare(sent, got):
    """Names of the keys whose value or type did not survive."""
    bad = []
    if not isinstance(got, dict):
        return ['<not a map>']
    for key, value in sent.items():
        back = got.get(key)
        if isinstance(value, numpy.ndarray):
            ok = isinstance(back, numpy.ndarray) and back.dtype == value.dtype \
                and numpy.array_equal(back, value)
        else:
            ok = type(back) is type(value) and back == value
            if isinstance(value, Decimal):
                ok = ok and str(back) == str(value)
        if not ok:
            bad.append(key)
    return bad


def main():
    _peer.start()
    addr = sys.argv[1]
    conn = _peer.connection('out', {'connection_type': 'requester'}, {'requester': addr})
    _peer.set_timeout(conn.socket, 5000)
    _peer.ready(addr=addr)
    sent = sent_values()
    mode = sys.argv[2] if len(sys.argv) > 2 else 'echo'
    deadline = time.monotonic() + 8
    while True:
        try:
            if mode == 'state':
                reply = conn.send({'args': {}, 'workflow_id': 'dynamic_state'})
                got = (reply.get('return_args') or {}).get('state')
            else:
                reply = conn.send({'args': sent, 'workflow_id': 'dynamic_1'})
                got = (reply.get('return_args') or {}).get('echoed')
        except zmq.Again:
            _peer.emit('timeout')
            sys.exit(1)
        bad = compare(sent, got)
        if mode != 'state' or not bad or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # pacing between asks; each ask is bounded by the socket timeout
    _peer.emit('reply', same=not bad, mismatches=bad, reply=_peer.jsonable(reply))
    conn.socket.close()


if __name__ == '__main__':
    main()
