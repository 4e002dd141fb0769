"""Helpers the test modules share (never imported from a test module): the ``fedshield``
command, ports, the deployment's processes, in-process ClientApp messages, the strategy's
grid stub, the simulation runner and a ServerApp's fake grid. Fixtures stay in
tests/conftest.py."""
