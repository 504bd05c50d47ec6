"""``python -m mlscale``: the same as the ``mlscale`` command."""

from mlscale.cli import main

main()
