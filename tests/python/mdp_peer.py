"""An MDP 0.2 client and worker (rfc.zeromq.org spec 18), written from the spec alone with
plain pyzmq, so that they share nothing with the broker under test.

    mdp_peer.py worker BROKER SERVICE NAME INTERVAL_MS LIVENESS [options]
    mdp_peer.py client BROKER

Protocol with the Rust test: a first stdout line `READY <json>`, then one JSON object per
line. Commands arrive on stdin, one per line.

Worker: replies to each request with a FINAL whose body is `NAME:<request body frames joined
by ,>`, after `partials` PARTIALs (`partials:NAME:<i>`). Emits `registered`, `request`,
`heartbeat` (one per broker HEARTBEAT), `disconnect` (DISCONNECT from the broker; the worker
then reconnects on a new socket and registers again, as the spec says), `broker_silent`
(liveness ran out: it reconnects too). Options:
    --partials N     PARTIALs before each FINAL
    --freeze         on its first request: stop replying and heartbeating (a hung worker)
    --no-ready       start with a HEARTBEAT instead of READY (a worker whose broker restarted)
Stdin: `disconnect` (send DISCONNECT, exit), `quit`.

Client (a DEALER, as the spec requires): stdin lines
    {"service": S, "body": [frames...], "timeout_ms": T}   ("body_hex" for binary frames)
answered by {"partials": [[frames]...], "final": [frames], "final_hex": [...], "service": S} or {"timeout": true};
    {"raw": [hex frames]}   sends those frames as they are, answered {"sent": true};
    {"recv_ms": T}          prints the next message's frames, or {"timeout": true}.
"""

import json
import select
import sys
import time

import zmq

CLIENT = b'MDPC02'
WORKER = b'MDPW02'
C_REQUEST, C_PARTIAL, C_FINAL = b'\x01', b'\x02', b'\x03'
W_READY, W_REQUEST, W_PARTIAL, W_FINAL, W_HEARTBEAT, W_DISCONNECT = (
    b'\x01', b'\x02', b'\x03', b'\x04', b'\x05', b'\x06')

CTX = zmq.Context()


def out(**fields):
    print(json.dumps(fields), flush=True)


def stdin_line(timeout_s):
    r, _, _ = select.select([sys.stdin], [], [], timeout_s)
    if not r:
        return None
    line = sys.stdin.readline()
    if line == '':
        return 'quit'
    return line.strip()


def dealer(broker):
    s = CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 200)
    s.connect(broker)
    return s


def run_worker(broker, service, name, interval_ms, liveness, args):
    partials = 0
    if '--partials' in args:
        partials = int(args[args.index('--partials') + 1])
    freeze = '--freeze' in args
    skip_ready = '--no-ready' in args
    interval = interval_ms / 1000.0
    frozen = False
    first = True
    print('READY ' + json.dumps({'name': name}), flush=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        sock = dealer(broker)
        if first and skip_ready:
            sock.send_multipart([WORKER, W_HEARTBEAT])
        else:
            sock.send_multipart([WORKER, W_READY, service.encode()])
            out(event='registered')
        first = False
        broker_expires = time.time() + interval * liveness
        heartbeat_at = time.time() + interval
        reconnect = False
        while not reconnect and time.time() < deadline:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            wait = max(0.0, min(heartbeat_at, broker_expires) - time.time())
            events = dict(poller.poll(min(wait, 0.05) * 1000))
            if sock in events:
                frames = sock.recv_multipart()
                if frozen:
                    continue
                broker_expires = time.time() + interval * liveness
                if len(frames) < 2 or frames[0] != WORKER:
                    out(event='invalid', frames=[f.hex() for f in frames])
                    continue
                cmd = frames[1]
                if cmd == W_REQUEST:
                    client, empty, body = frames[2], frames[3], frames[4:]
                    assert empty == b'', 'REQUEST: no empty frame after the client address'
                    text = [f.decode() for f in body]
                    out(event='request', body=text)
                    if freeze:
                        frozen = True
                        continue
                    for i in range(partials):
                        sock.send_multipart([WORKER, W_PARTIAL, client, b'',
                                             f'partial:{name}:{i}'.encode()])
                    sock.send_multipart([WORKER, W_FINAL, client, b'',
                                         f'{name}:{",".join(text)}'.encode()])
                    heartbeat_at = time.time() + interval
                elif cmd == W_HEARTBEAT:
                    out(event='heartbeat')
                elif cmd == W_DISCONNECT:
                    out(event='disconnect')
                    reconnect = True
                else:
                    out(event='invalid', frames=[f.hex() for f in frames])
            now = time.time()
            if not frozen and now >= heartbeat_at:
                sock.send_multipart([WORKER, W_HEARTBEAT])
                heartbeat_at = now + interval
            if not frozen and now >= broker_expires:
                out(event='broker_silent')
                reconnect = True
            line = stdin_line(0)
            if line == 'disconnect':
                sock.send_multipart([WORKER, W_DISCONNECT])
                sock.close()
                out(event='bye')
                return
            if line == 'quit':
                return
        sock.close(linger=0)


def run_client(broker):
    sock = dealer(broker)
    print('READY {}', flush=True)
    while True:
        line = stdin_line(30)
        if line is None or line == 'quit':
            return
        if not line:
            continue
        req = json.loads(line)
        if 'raw' in req:
            # Anything at all, for the broker's handling of malformed messages.
            sock.send_multipart([bytes.fromhex(f) for f in req['raw']])
            out(sent=True)
            continue
        if 'recv_ms' in req:
            # One message, whatever it is (replies to raw requests).
            if sock.poll(req['recv_ms']):
                out(frames=[f.decode(errors='replace') for f in sock.recv_multipart()])
            else:
                out(timeout=True)
            continue
        service = req['service'].encode()
        if 'body_hex' in req:
            body = [bytes.fromhex(f) for f in req['body_hex']]
        else:
            body = [f.encode() for f in req['body']]
        sock.send_multipart([CLIENT, C_REQUEST, service] + body)
        partials = []
        deadline = time.time() + req.get('timeout_ms', 5000) / 1000.0
        answered = False
        while time.time() < deadline:
            if not sock.poll(max(1, int((deadline - time.time()) * 1000))):
                break
            frames = sock.recv_multipart()
            assert frames[0] == CLIENT, f'reply header {frames[0]!r}'
            assert frames[2] == service, f'reply for service {frames[2]!r}'
            body = [f.decode(errors='replace') for f in frames[3:]]
            if frames[1] == C_PARTIAL:
                partials.append(body)
            elif frames[1] == C_FINAL:
                out(partials=partials, final=body, service=frames[2].decode(),
                    final_hex=[f.hex() for f in frames[3:]])
                answered = True
                break
            else:
                raise AssertionError(f'unknown client command {frames[1]!r}')
        if not answered:
            # The spec's recommended recovery: a new socket for the next request.
            out(timeout=True, partials=partials)
            sock.close(linger=0)
            sock = dealer(broker)


def main():
    import signal
    signal.alarm(90)  # a test must never hang
    role = sys.argv[1]
    if role == 'worker':
        broker, service, name, interval_ms, liveness = sys.argv[2:7]
        run_worker(broker, service, name, int(interval_ms), int(liveness), sys.argv[7:])
    elif role == 'client':
        run_client(sys.argv[2])
    else:
        raise SystemExit(f'unknown role {role}')


if __name__ == '__main__':
    main()
