"""The shared kernel every process imports: no I/O of its own beyond what a caller asks.

What both sides must agree on lives here once: the plan that crosses the wire and the
bounds an owner holds it to (``plan.py``), the server's, simulation's and owner's settings
(``config.py``, on ``kebab_config.py``), what crosses the wire (``wire.py``), the model,
its card and the featuriser (``model.py``, ``model_card.py``, ``minilm.py``,
``featurize.py``), the privacy maths (``privacy.py``), the
audit log format (``audit_log.py``, ``audit_events.py``), durable writes
(``durable.py``), data loading (``data.py``), certificates and keys (``pki.py``),
process supervision (``processes.py``), the error hierarchy and exit codes
(``errors.py``), JSON objects read from text others wrote (``json_text.py``), and the
version-checked reaches into Flower and Opacus internals (``flower_compat.py``,
``opacus_compat.py``).
Imports neither ``fedshield.client`` nor ``fedshield.server``.
"""
