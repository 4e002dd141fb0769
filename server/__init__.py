"""The operator's side: the ServerApp and the deployment that serves it.

Processes that run this package:
- ``fedshield server start`` (``operator.py``: the lifecycle, reporting through a
  callback; ``deployment.py``: flower-superlink on loopback and the owners' keys;
  ``fleet_gateway.py`` with ``fleet_sender.py`` and ``identity.py``: the only port owners
  reach, TLS, every pushed reply checked against its sender's key; ``status.py``: the
  ``server status`` view);
- the ServerApp (``app.py``), run by the SuperLink's executor or by the Simulation Engine:
  each round samples owners, sends the plan and model, validates every reply
  (``validate.py``), aggregates with a Flower strategy wrapped by ``strategy.py``,
  evaluates on the operator's data, and writes ``metrics.json``, checkpoints and its
  audit log (``outputs.py``, ``checkpoint.py``, ``poll.py``).
Never sees an owner's text; imports only ``fedshield.common``.
"""
