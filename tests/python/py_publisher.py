"""Python 0.0.18 publishers, one per --topic ('' = no topic), publishing until told to stop.

Without --x-pub: ONE PUB socket bound on tcp://*:port (get_publisher_socket) shared by
Publisher objects of every topic, so messages of several topics arrive on the same connection
(as on a bus). With --x-pub: every topic is its own Publisher connection that connects to a
bus proxy's XSUB side, as a 0.0.18 service with is_x_pub=True does. Messages go out through
the real Publisher.send (msg_pack(topic) + msg_pack(payload)).

Round i sends, for each topic t, {'args': {'n': i, 'topic': t, 'price': Decimal('1.50')},
'workflow_id': uuid4()}. Rounds repeat every INTERVAL_MS until stdin says `stop` or closes, or
MAX_S seconds pass (the slow-joiner problem: the test keeps it publishing until its
subscribers have seen what they need). Prints `done` with the number of rounds.
"""

import argparse
import select
import sys
import time
import uuid
import zmq
from decimal import Decimal

from service_framework.utils.socket_utils import get_publisher_socket
import _peer


def main():
    _peer.start()
    parser = argparse.ArgumentParser()
    parser.add_argument('addr')
    parser.add_argument('--topic', action='append', required=True)
    parser.add_argument('--x-pub', action='store_true')
    parser.add_argument('--interval-ms', type=int, default=10)
    parser.add_argument('--max-s', type=float, default=9.0)
    opts = parser.parse_args()

    publishers = []
    if opts.x_pub:
        for topic in opts.topic:
            model = {
                'connection_type': 'publisher',
                'optional_creation_arguments': {'topic': topic, 'is_x_pub': True},
            }
            publishers.append(_peer.connection('out', model, {'publisher': opts.addr}))
    else:
        context = zmq.Context()
        socket = get_publisher_socket(opts.addr, context)
        for topic in opts.topic:
            model = {'connection_type': 'publisher', 'optional_creation_arguments': {'topic': topic}}
            pub = _peer.Publisher(model, {'publisher': opts.addr})
            pub.context, pub.socket = context, socket
            publishers.append(pub)
    _peer.ready(addr=opts.addr, topics=opts.topic)

    deadline = time.monotonic() + opts.max_s
    rounds = 0
    while time.monotonic() < deadline:
        for pub in publishers:
            pub.send({
                'args': {'n': rounds, 'topic': pub.topic, 'price': Decimal('1.50')},
                'workflow_id': uuid.uuid4(),
            })
        rounds += 1
        readable, _, _ = select.select([sys.stdin], [], [], opts.interval_ms / 1000)
        if readable:
            line = sys.stdin.readline()
            if not line or line.strip() == 'stop':
                break
    _peer.emit('done', rounds=rounds)
    for pub in publishers:
        pub.socket.setsockopt(zmq.LINGER, 0)


if __name__ == '__main__':
    main()
