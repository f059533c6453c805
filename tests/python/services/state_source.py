""" A delta state source service for service_framework 0.0.18 (the counterpart of the Rust
`state_source` example). Main mode only.

Out-state `prices` (delta_update_out): main sends the scripted `updates` from its config, in
order, each {'current_num': int, 'is_snapshot': bool, 'state': {...}} (0.0.18 leaves the
numbering to the service), then sleeps `hold_s` seconds while the framework's service loop
(a background thread in main mode) keeps answering snapshot requests.

Run: python -m service_framework -s ./state_source.py -a source_addresses.json \
         -c source_config.json -m

Values written in the config as {"$ndarray": [...]}, {"$decimal": "1.10"}, {"$set": [...]},
{"$uuid": "..."} or {"$bytes": "<hex>"} are sent as the Python objects they name (a float64
numpy array, a Decimal, a set, a UUID, bytes), which msgpack_utils encodes as 0.0.18 does.

Prints `Sent: <json>` per update, then `SERIES DONE`.
"""

import json
import time
import uuid
from decimal import Decimal

import numpy

from service_framework import get_logger

LOG = get_logger()


def setup_config(config):
    """
    Give the optional numbers their types (a JSON file may hold 10 for 10.0).
    """
    config['hold_s'] = float(config.get('hold_s', 0))
    config['pause_s'] = float(config.get('pause_s', 0))
    return config


def typed(value):
    """
    The Python object a tagged JSON value names (see the module text); anything else as is.
    """
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == '$ndarray':
                return numpy.array(inner, dtype=numpy.float64)
            if tag == '$decimal':
                return Decimal(inner)
            if tag == '$set':
                return set(inner)
            if tag == '$uuid':
                return uuid.UUID(inner)
            if tag == '$bytes':
                return bytes.fromhex(inner)
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return value


def main(to_send, config):
    """
    Sends the scripted series, then keeps the service up for a while.
    """
    for update in config['updates']:
        LOG.info('Sending update: %s', update)
        to_send('state', 'prices', typed(update))
        print('Sent: ' + json.dumps(update), flush=True)
        if config['pause_s']:
            time.sleep(config['pause_s'])

    print('SERIES DONE', flush=True)
    time.sleep(config['hold_s'])


config_model = {
    'required': {
        'updates': [dict],
    },
    'optional': {
        'hold_s': float,
        'pause_s': float,
    },
}


state_models = {
    'out': {
        'prices': {
            'state_type': 'delta_update_out',
            'required_state_arguments': {
                'current_num': int,
                'is_snapshot': bool,
            },
            'required_arguments': {
                'state': dict,
            },
        },
    },
}
