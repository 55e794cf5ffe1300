"""The defaults every config starts from; they are written once, in `cotjax/defaults.py`.

    cotjax config --config=configs/base.py   # prints them
"""

from cotjax import defaults


def get_config(arg=None):
    return defaults.get_config()
