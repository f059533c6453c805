"""A libzmq (pyzmq) peer driven line by line over stdin, for the transport's interop tests.

Each input line is a JSON object with an "op"; each answers one JSON line on stdout.
Frames travel as hex strings.
  {"op": "socket", "type": "REP"}                 -> {"ok": true}
  {"op": "opt", "name": "HEARTBEAT_IVL", "value": 100}
  {"op": "bind", "ep": "tcp://127.0.0.1:*"}       -> {"ep": "tcp://127.0.0.1:40123"}
  {"op": "connect", "ep": "..."}
  {"op": "send", "frames": ["68690a"]}
  {"op": "recv", "timeout_ms": 2000}              -> {"frames": [...]} or {"timeout": true}
  {"op": "subscribe", "topic": "hex"} / {"op": "unsubscribe", "topic": "hex"}
  {"op": "monitor"}                               -> starts counting connection events
  {"op": "events"}                                -> {"connected": n, "accepted": n, "disconnected": n, "handshake_ok": n}
  {"op": "close"}
"""
import json
import sys
import threading

import zmq

ctx = zmq.Context()
sock = None
counts = {"connected": 0, "accepted": 0, "disconnected": 0, "handshake_ok": 0}
lock = threading.Lock()


def watch(mon):
    from zmq.utils.monitor import recv_monitor_message
    names = {
        zmq.EVENT_CONNECTED: "connected",
        zmq.EVENT_ACCEPTED: "accepted",
        zmq.EVENT_DISCONNECTED: "disconnected",
        zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_ok",
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
        if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
            return


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
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
        elif op == "recv":
            if sock.poll(req.get("timeout_ms", 2000), zmq.POLLIN):
                answer({"frames": [f.hex() for f in sock.recv_multipart()]})
            else:
                answer({"timeout": True})
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
        elif op == "close":
            sock.close()
            answer({"ok": True})
            break
        else:
            answer({"error": "unknown op " + op})
    except Exception as e:  # an answer, so the test sees what went wrong
        answer({"error": repr(e)})
