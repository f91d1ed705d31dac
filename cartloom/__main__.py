"""``python -m cartloom``: the same CLI as the ``cartloom`` command."""

from cartloom.cli.main import main

main()
