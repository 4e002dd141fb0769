"""Helpers the test modules share (never imported from a test module): the ``fedshield``
command, ports, the deployment's processes, in-process ClientApp messages, the strategy's
grid stub, the simulation runner, a ServerApp's fake grid and local training on empty
Poisson batches. Fixtures stay in tests/conftest.py."""
