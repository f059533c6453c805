"""A libzmq (pyzmq) peer driven line by line over stdin, for the transport's interop tests.

Each input line is a JSON object with an "op"; each answers one JSON line on stdout.
Frames travel as hex strings. Between ops the peer behaves like an application idling in
zmq_poll: it lets libzmq process the socket's commands as they come (a peer's connection
attached, its subscriptions sent, a closed one's pipe terminated), which an idle libzmq
socket otherwise defers until its next call.
  {"op": "socket", "type": "REP"}                 -> {"ok": true}
  {"op": "opt", "name": "HEARTBEAT_IVL", "value": 100}
  {"op": "bind", "ep": "tcp://127.0.0.1:*"}       -> {"ep": "tcp://127.0.0.1:40123"}
  {"op": "connect", "ep": "..."}
  {"op": "send", "frames": ["68690a"]}
  {"op": "send_nowait", "frames": [...]}          -> {"sent": true/false}: queued, or no room (no peer)
  {"op": "recv", "timeout_ms": 2000}              -> {"frames": [...]} or {"timeout": true}
  {"op": "recv_n", "count": 100, "timeout_ms": 2000}
                                                  -> {"messages": [[...], ...]}: up to count, stopping
                                                     once none arrives within timeout_ms
  {"op": "send_seq", "prefix": "hex", "count": 100} -> sends prefix + b"0", prefix + b"1", ...
  {"op": "subscribe", "topic": "hex"} / {"op": "unsubscribe", "topic": "hex"}
  {"op": "monitor"}                               -> starts counting connection events
  {"op": "events"}                                -> {"connected": n, "accepted": n, "disconnected": n, "handshake_ok": n,
                                                      "handshake_failed": n}
  {"op": "wait_event", "name": "disconnected", "count": 1, "timeout_ms": 5000}
                                                  -> the counts and "reached": whether that count was
                                                     reached in time
  {"op": "close"}
CURVE (keys as Z85 text):
  {"op": "curve_server", "secret": "...", "allow_dir": "/path" or absent}
                                                  -> CURVE_SERVER with that secret key; with allow_dir a
                                                     ZAP handler (zmq.auth ThreadAuthenticator) accepts
                                                     only the client keys of the *.key files there;
                                                     without it libzmq accepts any client
  {"op": "curve_client", "server": "...", "public": "...", "secret": "..."}
  {"op": "create_certificates", "dir": "/path", "name": "x"}
                                                  -> {"public": "...", "secret": "...", "public_file": ..., "secret_file": ...}
  {"op": "load_certificate", "path": "/path/x.key_secret"} -> {"public": "...", "secret": "..." or null}
  {"op": "has_curve"}                             -> {"curve": true/false}
"""
import json
import os
import select
import sys
import threading

import zmq

ctx = zmq.Context()
sock = None
auth = None
counts = {
    "connected": 0,
    "accepted": 0,
    "disconnected": 0,
    "handshake_ok": 0,
    "handshake_failed": 0,
}
lock = threading.Lock()
counted = threading.Condition(lock)


def watch(mon):
    from zmq.utils.monitor import recv_monitor_message
    names = {
        zmq.EVENT_CONNECTED: "connected",
        zmq.EVENT_ACCEPTED: "accepted",
        zmq.EVENT_DISCONNECTED: "disconnected",
        zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_ok",
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",
        zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed",
    }
    while True:
        try:
            ev = recv_monitor_message(mon)
        except zmq.ZMQError:
            return
        name = names.get(ev["event"])
        if name:
            with lock:
                counts[name] += 1
                counted.notify_all()
        if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
            return


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def requests():
    """The input lines; while none is pending, the socket's commands are processed."""
    pending = b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line
        fds = [0]
        zfd = None
        if sock is not None and not sock.closed:
            zfd = sock.getsockopt(zmq.FD)
            fds.append(zfd)
        ready, _, _ = select.select(fds, [], [])
        if zfd is not None and zfd in ready:
            sock.getsockopt(zmq.EVENTS)  # processes the commands; resets the descriptor
        if 0 in ready:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            pending += chunk


for line in requests():
    req = json.loads(line)
    op = req["op"]
    try:
        if op == "socket":
            sock = ctx.socket(getattr(zmq, req["type"]))
            sock.setsockopt(zmq.LINGER, 1000)
            answer({"ok": True})
        elif op == "opt":
            value = req["value"]
            if isinstance(value, str):
                value = bytes.fromhex(value)
            sock.setsockopt(getattr(zmq, req["name"]), value)
            answer({"ok": True})
        elif op == "bind":
            sock.bind(req["ep"])
            answer({"ep": sock.getsockopt(zmq.LAST_ENDPOINT).decode()})
        elif op == "connect":
            sock.connect(req["ep"])
            answer({"ok": True})
        elif op == "send":
            sock.send_multipart([bytes.fromhex(f) for f in req["frames"]])
            answer({"ok": True})
        elif op == "send_nowait":
            try:
                sock.send_multipart([bytes.fromhex(f) for f in req["frames"]], zmq.NOBLOCK)
                answer({"sent": True})
            except zmq.Again:
                answer({"sent": False})
        elif op == "recv":
            if sock.poll(req.get("timeout_ms", 2000), zmq.POLLIN):
                answer({"frames": [f.hex() for f in sock.recv_multipart()]})
            else:
                answer({"timeout": True})
        elif op == "recv_n":
            got = []
            while len(got) < req["count"] and sock.poll(req.get("timeout_ms", 2000), zmq.POLLIN):
                got.append([f.hex() for f in sock.recv_multipart()])
            answer({"messages": got})
        elif op == "send_seq":
            prefix = bytes.fromhex(req["prefix"])
            for i in range(req["count"]):
                sock.send(prefix + str(i).encode())
            answer({"ok": True})
        elif op == "subscribe":
            sock.setsockopt(zmq.SUBSCRIBE, bytes.fromhex(req["topic"]))
            answer({"ok": True})
        elif op == "unsubscribe":
            sock.setsockopt(zmq.UNSUBSCRIBE, bytes.fromhex(req["topic"]))
            answer({"ok": True})
        elif op == "monitor":
            mon = sock.get_monitor_socket()
            threading.Thread(target=watch, args=(mon,), daemon=True).start()
            answer({"ok": True})
        elif op == "events":
            with lock:
                answer(dict(counts))
        elif op == "wait_event":
            with lock:
                reached = counted.wait_for(
                    lambda: counts[req["name"]] >= req["count"],
                    req.get("timeout_ms", 5000) / 1000,
                )
                answer(dict(counts, reached=reached))
        elif op == "curve_server":
            if req.get("allow_dir"):
                from zmq.auth.thread import ThreadAuthenticator
                auth = ThreadAuthenticator(ctx)
                auth.start()
                auth.configure_curve(domain="*", location=req["allow_dir"])
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, req["secret"].encode())
            answer({"ok": True})
        elif op == "curve_client":
            sock.setsockopt(zmq.CURVE_SERVERKEY, req["server"].encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, req["public"].encode())
            sock.setsockopt(zmq.CURVE_SECRETKEY, req["secret"].encode())
            answer({"ok": True})
        elif op == "create_certificates":
            import zmq.auth
            pub_file, sec_file = zmq.auth.create_certificates(req["dir"], req["name"])
            public, secret = zmq.auth.load_certificate(sec_file)
            answer({"public": public.decode(), "secret": secret.decode(),
                    "public_file": pub_file, "secret_file": sec_file})
        elif op == "load_certificate":
            import zmq.auth
            public, secret = zmq.auth.load_certificate(req["path"])
            answer({"public": public.decode(), "secret": secret.decode() if secret else None})
        elif op == "has_curve":
            answer({"curve": bool(zmq.has("curve"))})
        elif op == "close":
            sock.close()
            if auth is not None:
                auth.stop()
            answer({"ok": True})
            break
        else:
            answer({"error": "unknown op " + op})
    except Exception as e:  # an answer, so the test sees what went wrong
        answer({"error": repr(e)})
