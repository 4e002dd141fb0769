"""The ``fedshield`` command line (cli -> server/client -> common)."""
