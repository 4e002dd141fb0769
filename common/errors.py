"""One exception hierarchy and every exit code: the CLI turns each error into one line and
its exit code (a traceback only with ``--debug``).

Exit codes: 2 an input, data, configuration or class-list problem (the default); 3 budget;
4 ledger; 5 the owner's policy; 6 a run without an accepted update; 7 a run stopped early;
8 the simulation engine did not start; 9 an installed Flower or Opacus is not the release
fedshield was written for; 69 an owner gave up reaching the SuperLink; 77 the operator
removed this owner's node; 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM).

Exceptions that never reach a person (a reply refused inside the server, a request body
too large for the gateway) stay private to their module, as control flow.
"""

from __future__ import annotations


class FedshieldError(Exception):
    """A failure a person can act on: the message names the value and the fix."""

    exit_code = 2


class DataError(FedshieldError):
    """A data file is missing, unreadable or unsuitable for training."""


class SealedFileError(DataError):
    """A sealed file (common/sealed.py) fails authentication or is not sealed: it is
    never used; the message names the file, what is wrong, and what happens next."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(
            f"{path}: {reason}. It is not used: an encoding cache is rebuilt from your "
            "data, a kept release is treated as absent (that round trains again, charged "
            "as new)"
        )
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across processes, like any other error
        return (type(self), (self.path, self.reason))


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


EXIT_SUPERLINK_UNREACHABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_REMOVED = 77  # sysexits EX_NOPERM: the federation no longer admits this node


class SuperLinkUnreachable(FedshieldError):
    """The SuperLink did not answer within the owner's retry limits."""

    exit_code = EXIT_SUPERLINK_UNREACHABLE


class StoppedBySignal(FedshieldError):
    """SIGINT or SIGTERM arrived while the node waited for the SuperLink."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class ForeignAppRefused(FedshieldError):
    """A run asked this SuperNode to execute an app other than the installed fedshield one."""

    def __init__(self, reason: str, identity: dict[str, str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.identity = identity  # fab-hash, fab-name, clientapp: for the audit entry


class ModelRefused(FedshieldError):
    """A saved model is missing, altered, of an unknown format, or not what it claims."""


class AuditLogError(FedshieldError):
    """The audit log cannot be opened or appended to."""


class EvaluationFileError(FedshieldError):
    """The evaluation file given to the report is missing or not in the expected format."""
