"""A pyzmq (libzmq 4.3.5 with libsodium) CURVE peer for the bus security tests.

Keys are libzmq certificates, read with zmq.auth.load_certificate and made with
zmq.auth.create_certificates. A key argument of `-` means "no CURVE" (a NULL peer).

  certs DIR NAME                     create_certificates(DIR, NAME); prints the public key
  load FILE                          load_certificate(FILE); prints the public key (and whether
                                     the file held a secret key)
  call ENDPOINT SERVER_KEY CLIENT_SECRET JSON TIMEOUT_MS
                                     one 0.0.18 request {args, workflow_id} on a REQ socket;
                                     prints {"reply": ...} or {"timeout": true}
  call_until ENDPOINT SERVER_KEY CLIENT_SECRET JSON TOTAL_MS
                                     `call` with a fresh socket, again until a reply or TOTAL_MS
  serve PORT SERVER_SECRET CLIENTS_DIR COUNT
                                     a REP CURVE server bound on tcp://127.0.0.1:PORT; ZAP
                                     allows the client keys of CLIENTS_DIR; echoes COUNT
                                     0.0.18 requests ({to_echo} -> {echoed}), then exits
  sub ENDPOINT SERVER_KEY CLIENT_SECRET PREFIX COUNT TIMEOUT_MS
                                     a SUB CURVE client; prints one line per message (its
                                     topic and args) until COUNT, or {"timeout": true}
  pub PORT SERVER_SECRET TOPIC
                                     a PUB CURVE server (any client), publishing 0.0.18
                                     messages {args: {n}} under TOPIC every 20 ms until killed

Every mode prints `READY ...` once its socket is set up, then JSON lines, and ends by itself
(receive timeouts, and an alarm as a last resort).
"""

import io
import json
import os
import signal
import sys
import time
import uuid

import msgpack
import zmq
import zmq.auth
from service_framework.utils.msgpack_utils import msg_pack, msg_unpack


def out(**fields):
    print(json.dumps(fields), flush=True)


def ready(**info):
    print('READY ' + json.dumps(info), flush=True)


def curve_client(sock, server_key, client_secret):
    if server_key == '-':
        return
    server_public, _ = zmq.auth.load_certificate(server_key)
    public, secret = zmq.auth.load_certificate(client_secret)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def curve_server(sock, server_secret):
    public, secret = zmq.auth.load_certificate(server_secret)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def one_call(ctx, endpoint, server_key, client_secret, args, timeout_ms):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    curve_client(s, server_key, client_secret)
    s.connect(endpoint)
    try:
        s.send(msg_pack({'args': args, 'workflow_id': str(uuid.uuid4())}))
        reply = msg_unpack(s.recv())
        return {'reply': reply.get('return_args')}
    except zmq.Again:
        return {'timeout': True}
    finally:
        s.close()


def main():
    signal.alarm(30)
    mode, rest = sys.argv[1], sys.argv[2:]
    ctx = zmq.Context()
    if mode == 'certs':
        d, name = rest
        os.makedirs(d, exist_ok=True)  # create_certificates does not make it
        pub, sec = zmq.auth.create_certificates(d, name)
        out(public=zmq.auth.load_certificate(pub)[0].decode(), public_file=pub, secret_file=sec)
    elif mode == 'load':
        public, secret = zmq.auth.load_certificate(rest[0])
        out(public=public.decode(), has_secret=secret is not None)
    elif mode == 'call':
        endpoint, server_key, client_secret, args, timeout_ms = rest
        ready(endpoint=endpoint)
        out(**one_call(ctx, endpoint, server_key, client_secret, json.loads(args), int(timeout_ms)))
    elif mode == 'call_until':
        endpoint, server_key, client_secret, args, total_ms = rest
        ready(endpoint=endpoint)
        deadline = time.monotonic() + int(total_ms) / 1000
        attempts = 0
        while True:
            attempts += 1
            r = one_call(ctx, endpoint, server_key, client_secret, json.loads(args), 500)
            if 'reply' in r or time.monotonic() > deadline:
                out(attempts=attempts, **r)
                break
    elif mode == 'serve':
        port, server_secret, clients_dir, count = rest
        from zmq.auth.thread import ThreadAuthenticator
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain='*', location=clients_dir)
        s = ctx.socket(zmq.REP)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.RCVTIMEO, 15000)
        curve_server(s, server_secret)
        s.bind('tcp://127.0.0.1:%s' % port)
        ready(port=int(port))
        for _ in range(int(count)):
            try:
                req = msg_unpack(s.recv())
            except zmq.Again:
                out(idle=True)
                break
            out(request=req['args'])
            s.send(msg_pack({'return_args': {'echoed': req['args']['to_echo']},
                             'workflow_id': req.get('workflow_id')}))
        s.close()
        auth.stop()
    elif mode == 'sub':
        endpoint, server_key, client_secret, prefix, count, timeout_ms = rest
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, int(timeout_ms))
        curve_client(s, server_key, client_secret)
        s.setsockopt(zmq.SUBSCRIBE, msg_pack(prefix) if prefix else b'')
        s.connect(endpoint)
        ready(endpoint=endpoint)
        for _ in range(int(count)):
            try:
                frame = s.recv()
            except zmq.Again:
                out(timeout=True)
                break
            # The 0.0.18 publish frame: msgpack(topic) then msgpack({args, ...}).
            values = list(msgpack.Unpacker(io.BytesIO(frame), raw=False))
            out(topic=values[0] if len(values) > 1 else None, args=values[-1].get('args'))
    elif mode == 'pub':
        port, server_secret, topic = rest
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        curve_server(s, server_secret)
        s.bind('tcp://127.0.0.1:%s' % port)
        ready(port=int(port))
        n = 0
        while True:
            s.send(msg_pack(topic) + msg_pack({'args': {'n': n}}))
            n += 1
            time.sleep(0.02)
    else:
        sys.exit('unknown mode %r' % mode)
    os._exit(0)


if __name__ == '__main__':
    main()
