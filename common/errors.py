"""One exception hierarchy; the CLI turns each into a message and a non-zero exit code."""

from __future__ import annotations


class FedshieldError(Exception):
    """A failure a person can act on: the message names the value and the fix."""

    exit_code = 2


class DataError(FedshieldError):
    """A data file is missing, unreadable or unsuitable for training."""


class ConfigError(FedshieldError):
    """A configuration value is missing, of the wrong type or out of range."""


class PrivacyBudgetExceeded(FedshieldError):
    """The planned round would take the owner's epsilon past its budget."""

    exit_code = 3


class LedgerCorrupted(FedshieldError):
    """The privacy ledger on disk fails its integrity check; training is refused."""

    exit_code = 4


class PolicyRefusal(FedshieldError):
    """A plan asks for something the data owner's own policy does not allow."""

    exit_code = 5


class RunFailed(FedshieldError):
    """A run ended without a single accepted update: no owner's data reached the model."""

    exit_code = 6


class RunStoppedEarly(FedshieldError):
    """A run stopped before its last round because every owner refused for budget; the
    model of the last round with an accepted update is saved."""

    exit_code = 7


class SimulationEngineFailed(FedshieldError):
    """The simulation engine (Ray) could not start: nothing ran, nothing was charged."""

    exit_code = 8


class DependencyMismatch(FedshieldError):
    """An installed Flower or Opacus is not the release whose internals fedshield reaches
    into (common/flower_compat.py, common/opacus_compat.py)."""

    exit_code = 9
