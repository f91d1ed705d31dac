"""``python -m cartloom``: the same CLI as the ``cartloom`` command."""

from cartloom.cli import main

main()
