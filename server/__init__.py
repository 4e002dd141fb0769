"""The operator's side: the ServerApp and the deployment that serves it.

Processes that run this package:
- ``fedshield server start`` (``operator.py``: the lifecycle, reporting through a
  callback; ``superlink.py``: flower-superlink on loopback and the gateway processes;
  ``deployment.py``: the steps through Flower's ``flwr`` CLI (keys, nodes, the run);
  ``owner_registry.py``: ``owners.json``; ``fleet_gateway.py`` with ``fleet_sender.py``
  and ``identity.py``: the only port owners reach, TLS, every pushed reply checked
  against its sender's key; ``status.py``: the ``server status`` view);
- the ServerApp (``app.py``), run by the SuperLink's executor or by the Simulation Engine:
  each round samples owners, sends the plan and model, validates every reply
  (``validate.py``), aggregates with a Flower strategy (``strategy.py`` chooses it,
  ``validating_strategy.py`` wraps it, ``round_record.py`` keeps each round's record),
  waits as ``round_timeout.py`` says,
  evaluates on the operator's data, and writes ``metrics.json``, checkpoints and its
  audit log (``outputs.py``, ``checkpoint.py``, ``poll.py``).
Never sees an owner's text; imports only ``fedshield.common``.
"""
