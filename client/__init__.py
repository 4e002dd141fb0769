"""The data owner's side: everything that touches an owner's private text runs here.

Two processes run this package at a deployed owner, and none other sees its data:
- ``fedshield client start`` (the owner's node: ``node.py`` checks the settings, waits for
  the SuperLink, compares the published class list, then supervises a Flower SuperNode:
  ``node_settings.py``, ``superlink_wait.py``, ``published.py``, ``class_check.py``,
  ``supernode.py``, ``supernode_launcher.py``, ``stop_signals.py``);
- the SuperNode's warm executor (``executor.py``), which forks one task per message and
  runs only fedshield's ClientApp (``app.py``): accept the plan and model
  (``accept.py``), the owner's data and policy (``owner.py``), the DP record count
  (``count.py``), DP-SGD (``train.py``, ``dp_sgd.py``, ``secure_random.py``), the charge
  before release (``charge.py``, ``ledger.py``), DP evaluate answers (``evaluate.py``,
  ``releases.py``).
In a simulation the same ClientApp runs in Ray actors of the operator's machine.
Imports only ``fedshield.common``; never ``fedshield.server``.
"""
