"""The ``cartloom`` command line (:mod:`cartloom.cli.main`).

Nothing but ``cartloom.__main__`` imports it.
"""
