"""A Python 0.0.18 subscriber (get_subscriber_socket through the real Subscriber class).

Usage: py_subscriber.py ADDR TOPIC COUNT TIMEOUT_MS [EXTRA_ADDR...]
Connects to ADDR (and to every EXTRA_ADDR on the same SUB socket, like several publishers
reaching one subscriber), subscribes to msg_pack(TOPIC) ('' = everything), and decodes each
frame with Subscriber._decode_message (strip len(msg_pack(topic)) bytes, msg_unpack). Prints
a `message` line per message until COUNT messages, or `timeout` when none came for TIMEOUT_MS.
"""

import sys

import zmq
import _peer


def main():
    _peer.start()
    addr, topic, count, timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model = {
        'connection_type': 'subscriber',
        'required_creation_arguments': {'on_new_message': lambda args, to_send, states, config: None},
        'optional_creation_arguments': {'topic': topic},
    }
    conn = _peer.connection('in', model, {'subscriber': addr})
    for extra in sys.argv[5:]:
        conn.socket.connect('tcp://%s' % extra)
    _peer.set_timeout(conn.socket, timeout_ms)
    _peer.ready(addr=addr, topic=topic)
    for _ in range(count):
        try:
            raw = conn.socket.recv()
        except zmq.Again:
            _peer.emit('timeout')
            break
        payload = conn._decode_message(raw)
        _peer.emit('message', payload=_peer.jsonable(payload), keys=sorted(payload.keys()))
    conn.socket.close()


if __name__ == '__main__':
    main()
