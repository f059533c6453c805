"""A Python 0.0.18 requester asking a Rust service's control endpoint at ADDR (host:port)
each verb given after it (ping, info, stats, health), through Requester.send.

Prints one `reply` line per verb, or `timeout` and exits 1.
"""

import sys

import zmq
import _peer


def main():
    _peer.start()
    addr, verbs = sys.argv[1], sys.argv[2:]
    conn = _peer.connection('out', {'connection_type': 'requester'}, {'requester': addr})
    _peer.set_timeout(conn.socket, 5000)
    _peer.ready(addr=addr)
    for verb in verbs:
        try:
            reply = conn.send({'args': {'verb': verb}, 'workflow_id': 'py-' + verb})
        except zmq.Again:
            _peer.emit('timeout', verb=verb)
            sys.exit(1)
        _peer.emit('reply', verb=verb, reply=_peer.jsonable(reply))
    conn.socket.close()


if __name__ == '__main__':
    main()
