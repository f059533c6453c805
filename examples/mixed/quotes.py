""" A quote service for service_framework 0.0.18: the one service of the mixed example that
is still Python, between Rust services (see README.md beside it).

In-connection `ticks` (subscriber, topic "ticks"): the market clock, {'n': int}, published
by the Rust `ticker`. On each tick every symbol is priced again (a fixed, repeatable walk:
see `price`), and the whole board is published.

In-connection `quote` (replyer): {'symbol': str} -> {'symbol': str, 'price': float,
'tick': int}, the price at the last tick (`tick` -1 and the opening price before any).
An unknown symbol is answered with `price` -1.0 and an `error` (0.0.18 would stop the
service if the handler raised).

Out-state `board` (full_update_out): {'tick': n, 'prices': {'<symbol>': price, ...}}, the
whole board, published after each tick; the Rust `weather_mirror` follows it.

Config (optional): `symbols` (list of str, default ACME, GLOBEX, INITECH), `open` (float,
the opening price of the first symbol, default 100.0; each next one opens 10.0 higher).

Run alone: python -m service_framework -s ./quotes.py -a quotes_addresses.json
"""

import json

from service_framework import get_logger

LOG = get_logger()

DEFAULT_SYMBOLS = ['ACME', 'GLOBEX', 'INITECH']

# The service's own state: 0.0.18 gives handlers `states` for in-states only.
BOARD = {'tick': -1, 'prices': {}}


def setup_config(config):
    """
    The defaults, and the types a JSON file may blur (100 for 100.0).
    """
    config['symbols'] = [str(s) for s in config.get('symbols', DEFAULT_SYMBOLS)]
    config['open'] = float(config.get('open', 100.0))
    return config


def price(config, index, tick):
    """
    The price of the `index`th symbol at `tick` (-1: the opening price): a walk of +0.25
    per tick that falls back by 1.0 every fifth tick, so anyone can check a quote.
    """
    n = tick + 1
    return round(config['open'] + 10.0 * index + 0.25 * n - 1.25 * (n // 5), 2)


def prices_at(config, tick):
    """
    Every symbol's price at `tick`.
    """
    return {s: price(config, i, tick) for i, s in enumerate(config['symbols'])}


def init_function(to_send, states, config):
    """
    Opening prices, before the first tick.
    """
    BOARD['prices'] = prices_at(config, -1)
    print('Opening: ' + json.dumps(BOARD['prices'], sort_keys=True), flush=True)


def on_tick(args, to_send, states, config):
    """
    Called for each tick: prices everything at that tick and publishes the board.
    """
    tick = args['n']
    BOARD['tick'] = tick
    BOARD['prices'] = prices_at(config, tick)
    print('Priced tick {}: {}'.format(tick, json.dumps(BOARD['prices'], sort_keys=True)),
          flush=True)
    to_send('state', 'board', {'tick': tick, 'prices': BOARD['prices']})


def on_quote(args, to_send, states, config):
    """
    Called for each `quote` request.
    """
    symbol = args['symbol']
    LOG.info('Quote asked for %s', symbol)
    if symbol not in BOARD['prices']:
        return {'symbol': symbol, 'price': -1.0, 'tick': BOARD['tick'],
                'error': 'unknown symbol; known: ' + ', '.join(config['symbols'])}
    return {'symbol': symbol, 'price': BOARD['prices'][symbol], 'tick': BOARD['tick']}


config_model = {
    'required': {},
    'optional': {
        'symbols': [str],
        'open': float,
    },
}


connection_models = {
    'in': {
        'ticks': {
            'connection_type': 'subscriber',
            'required_creation_arguments': {
                'on_new_message': on_tick,
            },
            'optional_creation_arguments': {
                'topic': 'ticks',
            },
            'required_arguments': {
                'n': int,
            },
        },
        'quote': {
            'connection_type': 'replyer',
            'required_creation_arguments': {
                'on_new_request': on_quote,
            },
            'required_arguments': {
                'symbol': str,
            },
            'required_return_arguments': {
                'symbol': str,
                'price': float,
                'tick': int,
            },
            'optional_return_arguments': {
                'error': str,
            },
        },
    },
}


state_models = {
    'out': {
        'board': {
            'state_type': 'full_update_out',
            'required_arguments': {
                'tick': int,
                'prices': dict,
            },
        },
    },
}
