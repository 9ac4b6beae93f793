"""Names kept for cli.py and handlers.py, which another change rewrites now: the
validation pipeline lives in mmo_operator.validation, document reading in api.parse.
Nothing else imports this module; delete it when those two import the new homes."""

from mmo_operator.api.parse import parse_model, read_file, resolve_architecture
from mmo_operator.validation import (
    builtin_rule_problems,
    capacity_of,
    cross_field_problems,
    validate,
    validate_file,
)

__all__ = [
    "builtin_rule_problems",
    "capacity_of",
    "cross_field_problems",
    "parse_model",
    "read_file",
    "resolve_architecture",
    "validate",
    "validate_file",
]
