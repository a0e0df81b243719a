"""``python -m hub.cli``: the ``mhub`` command line."""

from . import main

main()
