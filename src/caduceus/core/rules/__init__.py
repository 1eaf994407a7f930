"""Routing rules in mercure's syntax, such as ``@Modality@ == 'CT'``, checked and evaluated."""

from caduceus.core.rules.budget import Budget, EvaluationError
from caduceus.core.rules.evaluator import Rule, parse_rule
from caduceus.core.rules.parser import RuleError

__all__ = ["Budget", "EvaluationError", "Rule", "RuleError", "parse_rule"]
