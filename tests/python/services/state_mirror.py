""" A delta state mirror service for service_framework 0.0.18 (the counterpart of the Rust
`state_mirror` example).

In-state `prices` (delta_update_in) follows a delta_update_out; in-connection `get_state`
(replyer) answers any request with {'state': <the mirrored prices>}.

Run: python -m service_framework -s ./state_mirror.py -a mirror_addresses.json

Prints `READY` on stdout once its sockets are set up (init_function runs after the framework
built the states and connections).
"""

from service_framework import get_logger

LOG = get_logger()


def init_function(to_send, states, config):
    """
    Called by the framework after the states and connections are set up.
    """
    print('READY', flush=True)


def on_get_state(args, to_send, states, config):
    """
    Called for each request on the `get_state` connection.
    """
    LOG.info('Current prices: %s', states['prices'])
    return {'state': states['prices']}


connection_models = {
    'in': {
        'get_state': {
            'connection_type': 'replyer',
            'required_creation_arguments': {
                'on_new_request': on_get_state,
            },
            'required_return_arguments': {
                'state': dict,
            },
        },
    },
}


state_models = {
    'in': {
        'prices': {
            'state_type': 'delta_update_in',
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
