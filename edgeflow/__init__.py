"""edgeflow: an actor-based edge runtime for constrained devices.

Actor authors import from here (and from `edgeflow.testing` to unit-test an actor); everything else
is internal and may move.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .actor import Actor, Context, Operator, Sink, Source
from .errors import ConfigError, EdgeflowError, NotReady, Permanent, Retryable
from .message import Ack, Message
from .schema import (
    Config,
    ConnectionRef,
    Duration,
    Expr,
    Predicate,
    Secret,
    SecretEnv,
    SecretFile,
    Size,
    Template,
    field,
)

__all__ = [
    "Ack",
    "Actor",
    "Config",
    "ConfigError",
    "ConnectionRef",
    "Context",
    "Duration",
    "EdgeflowError",
    "Expr",
    "Message",
    "NotReady",
    "Operator",
    "Permanent",
    "Predicate",
    "Retryable",
    "Secret",
    "SecretEnv",
    "SecretFile",
    "Sink",
    "Size",
    "Source",
    "Template",
    "__version__",
    "field",
]
