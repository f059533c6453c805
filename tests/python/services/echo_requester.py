""" An echo requester service for service_framework 0.0.18 (the counterpart of the Rust
`echo_requester` example). Main mode only.

Out-connection `request` (requester): sends {'to_echo': str}, expects {'echoed': str}.

Run: python -m service_framework -s ./echo_requester.py -a requester_addresses.json -m \
         --num_req_to_send 5 [--bad_arg_first yes]

Prints one `Got Response: <json>` line per reply. With `bad_arg_first`, it first sends one
request whose `to_echo` is a number (its own model is loosened so that 0.0.18 lets it out);
0.0.18's to_send hands back only `return_args` and validates it, so an error reply (whose
`return_args` is nil) surfaces as a ValueError, printed as `Got Error: <json string>`. The
whole reply, `error` included, is in the framework's DEBUG log line
"Parsing returned Response: ..." (run with -cl DEBUG to see it).
"""

import json

from service_framework import get_logger

LOG = get_logger()


def setup_config(config):
    """
    Command line values arrive as strings: give them their types.
    """
    config['num_req_to_send'] = int(config['num_req_to_send'])
    if 'bad_arg_first' in config:
        config['bad_arg_first'] = str(config['bad_arg_first'])
    return config


def setup_connection_models(models, config):
    """
    0.0.18 validates outgoing args against the model before sending: to send a wrongly typed
    `to_echo` on purpose, accept anything for it.
    """
    if config.get('bad_arg_first'):
        models['out']['request']['required_arguments'] = {'to_echo': object}
    return models


def main(to_send, config):
    """
    Sends the requests and prints each reply.
    """
    if config.get('bad_arg_first'):
        try:
            returned = to_send('connection', 'request', {'to_echo': 12345})
            print('Got Response: ' + json.dumps(returned), flush=True)
        except ValueError as err:
            print('Got Error: ' + json.dumps(str(err)), flush=True)

    for num in range(config['num_req_to_send']):
        payload = {'to_echo': 'Hello World - ' + str(num)}
        LOG.info('Sending payload: %s', payload)
        returned = to_send('connection', 'request', payload)
        print('Got Response: ' + json.dumps(returned), flush=True)


config_model = {
    'required': {
        'num_req_to_send': int,
    },
    'optional': {
        'bad_arg_first': str,
    },
}


connection_models = {
    'out': {
        'request': {
            'connection_type': 'requester',
            'required_arguments': {
                'to_echo': str,
            },
            'required_return_arguments': {
                'echoed': str,
            },
        },
    },
}
