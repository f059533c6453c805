"""A Python 0.0.18 replyer (REP bound on tcp://*:PORT) serving echo requests.

It processes each request as the 0.0.18 service loop does: Replyer.decode_message, call the
handler with payload['args'], then Replyer.return_to_requester({'return_args': ...,
'workflow_id': payload.get('workflow_id')}). Handler: {'to_echo': x} -> {'echoed': x}
(None for x == 'none'); {'echo_all': ...} -> the args themselves (Decimal, set, UUID, ndarray
travel back re-encoded by Python). Prints one `request` line per request. Exits after COUNT
requests or when idle for IDLE_MS.
"""

import sys

import zmq
import _peer


def on_new_request(args, to_send, states, config):
    if 'echo_all' in args:
        return args
    if args['to_echo'] == 'none':
        return None
    return {'echoed': args['to_echo']}


def main():
    _peer.start()
    addr, count, idle_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = {
        'connection_type': 'replyer',
        'required_creation_arguments': {'on_new_request': on_new_request},
    }
    conn = _peer.connection('in', model, {'replyer': addr})
    _peer.set_timeout(conn.socket, idle_ms)
    _peer.ready(addr=addr)
    for _ in range(count):
        try:
            raw = conn.socket.recv()
        except zmq.Again:
            _peer.emit('idle')
            break
        payload = conn.decode_message(raw)
        _peer.emit('request', payload=_peer.jsonable(payload))
        return_args = on_new_request(payload.get('args'), None, {}, {})
        conn.return_to_requester({
            'return_args': return_args,
            'workflow_id': payload.get('workflow_id'),
        })
    conn.socket.close()


if __name__ == '__main__':
    main()
