"""Generates the byte-exact wire vectors the Rust codec is checked against.

Every vector is produced by the real `service_framework` 0.0.18 encoder
(`service_framework.utils.msgpack_utils.msg_pack`), so the Rust test
`connections/tests/wire_vectors.rs` compares against what a Python 0.0.18 service actually
puts on the wire.

Usage: python gen_vectors.py [OUTPUT]   (default: connections/tests/vectors/wire_vectors.json)
The output is deterministic: running it again must give the committed file byte for byte.
"""

import json
import os
import sys
import uuid
from decimal import Decimal

import msgpack
import numpy
from service_framework.utils.msgpack_utils import msg_pack, msg_unpack

FIXED_UUID = uuid.UUID('0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, 'connections', 'tests', 'vectors', 'wire_vectors.json')


def cases():
    """[(name, description, bytes)] in a fixed order."""
    out = []

    def add(name, description, data):
        if not name.startswith('publish_topic'):
            msg_unpack(data)  # one whole value the package's own decoder accepts
        out.append((name, description, data))

    add('request_plain', "{'args': {'to_echo': 'hello'}, 'workflow_id': None}",
        msg_pack({'args': {'to_echo': 'hello'}, 'workflow_id': None}))
    add('request_workflow_str', "{'args': {'to_echo': 'hello'}, 'workflow_id': 'abc_1'}",
        msg_pack({'args': {'to_echo': 'hello'}, 'workflow_id': 'abc_1'}))
    add('request_workflow_uuid',
        "{'args': {'to_echo': 'hello'}, 'workflow_id': UUID('%s')}" % FIXED_UUID,
        msg_pack({'args': {'to_echo': 'hello'}, 'workflow_id': FIXED_UUID}))
    add('reply_plain', "{'return_args': {'echoed': 'hello'}, 'workflow_id': None}",
        msg_pack({'return_args': {'echoed': 'hello'}, 'workflow_id': None}))
    add('reply_none', "{'return_args': None, 'workflow_id': 'abc'}",
        msg_pack({'return_args': None, 'workflow_id': 'abc'}))
    publish_payload = {'args': {'value': 7, 'name': 'x'}, 'workflow_id': None}
    add('publish_no_topic', "msg_pack(%r)" % (publish_payload,), msg_pack(publish_payload))
    topic_payload = {'args': {'value': 7, 'name': 'x'}, 'workflow_id': FIXED_UUID}
    add('publish_topic_TOP', "msg_pack('TOP') + msg_pack(%r)" % (topic_payload,),
        msg_pack('TOP') + msg_pack(topic_payload))
    add('request_decimal', "{'args': {'price': Decimal('1.50')}, 'workflow_id': None}",
        msg_pack({'args': {'price': Decimal('1.50')}, 'workflow_id': None}))
    add('set_single', "{1}", msg_pack({1}))
    add('ndarray_f64', "numpy.array([1.0, 2.5], dtype=numpy.float64)",
        msg_pack(numpy.array([1.0, 2.5], dtype=numpy.float64)))
    for value in [0, 127, 128, 255, 256, 65535, 65536, 2**32,
                  -1, -32, -33, -128, -129, -32768, -32769]:
        add('int_%s' % value, repr(value), msg_pack(value))
    add('float_1_5', '1.5', msg_pack(1.5))
    add('bytes_00_01', "b'\\x00\\x01'", msg_pack(b'\x00\x01'))
    nested = {'list': [1, 'two', None, True, 2.5], 'map': {'inner': {'empty': [], 'flag': False}}}
    add('nested', repr(nested), msg_pack(nested))
    add('str8_40_chars', "'a' * 40", msg_pack('a' * 40))
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    doc = {
        'about': 'Produced by tests/python/gen_vectors.py with service_framework 0.0.18 '
                 'msg_pack; do not edit by hand.',
        'msgpack_version': '.'.join(str(v) for v in msgpack.version),
        'vectors': {
            name: {'description': description, 'hex': data.hex()}
            for name, description, data in cases()
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write('\n')


if __name__ == '__main__':
    main()
