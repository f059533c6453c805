"""A Python 0.0.18 requester sending a fixed scenario to a replyer at ADDR (host:port).

Each request goes through Requester.send (msg_pack, REQ send, REQ recv, msg_unpack); the raw
malformed frame goes straight to the same REQ socket. Prints one `reply` line per request, or
`timeout` and exits 1 (a REQ without its reply cannot send again).
"""

import sys
import uuid

import zmq
import _peer

FIXED_UUID = uuid.UUID('0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c')


def main():
    _peer.start()
    addr, tag = sys.argv[1], sys.argv[2]
    conn = _peer.connection('out', {'connection_type': 'requester'}, {'requester': addr})
    _peer.set_timeout(conn.socket, 5000)
    _peer.ready(addr=addr)
    scenario = [
        ('uuid_id', {'args': {'to_echo': tag + ' hello'}, 'workflow_id': FIXED_UUID}),
        ('str_id', {'args': {'to_echo': tag + ' world'}, 'workflow_id': 'abc_1'}),
        ('wrong_type', {'args': {'to_echo': 5}, 'workflow_id': 'bad_type'}),
        ('missing_arg', {'args': {}, 'workflow_id': 'missing'}),
        ('no_args_key', {'workflow_id': 'no_args'}),
        ('not_msgpack', b'\xc1\xc1 not msgpack'),
        ('still_serving', {'args': {'to_echo': tag + ' again'}, 'workflow_id': None}),
    ]
    for name, request in scenario:
        try:
            if isinstance(request, bytes):
                conn.socket.send(request)
                reply = _peer.msg_unpack(conn.socket.recv())
            else:
                reply = conn.send(request)
        except zmq.Again:
            _peer.emit('timeout', name=name)
            sys.exit(1)
        _peer.emit('reply', name=name, reply=_peer.jsonable(reply))
    conn.socket.close()


if __name__ == '__main__':
    main()
