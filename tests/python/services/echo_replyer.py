""" An echo replyer service for service_framework 0.0.18 (the counterpart of the Rust
`echo_replyer` example).

In-connection `reply` (replyer): {'to_echo': str} -> {'echoed': str}.

Run: python -m service_framework -s ./echo_replyer.py -a replyer_addresses.json

Prints `READY` on stdout once its socket is bound (init_function runs after the framework
built the connections), then one `Got Request: <json>` line per request it answers.
"""

import json

from service_framework import get_logger

LOG = get_logger()


def init_function(to_send, states, config):
    """
    Called by the framework after the connections are set up, before the service loop.
    """
    print('READY', flush=True)


def on_new_request(args, to_send, states, config):
    """
    Called for each request on the `reply` connection.
    """
    LOG.info('Echoing: %s', args)
    print('Got Request: ' + json.dumps(args), flush=True)
    return {'echoed': args['to_echo']}


connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {
                'on_new_request': on_new_request,
            },
            'required_arguments': {
                'to_echo': str,
            },
            'required_return_arguments': {
                'echoed': str,
            },
        },
    },
}
