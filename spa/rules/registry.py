"""Registry of channel rules keyed by (domain, op type, opset range).

Registering a rule whose key overlaps an existing one raises, so two rules can never silently compete.

>>> from spa.rules.defaults import default_registry
>>> default_registry().lookup("", "Relu", 17) is not None
True
"""

from __future__ import annotations

from collections.abc import Iterable

from spa.rules.base import ChannelRule


class DuplicateRuleError(ValueError):
    """Two rules claim the same (domain, op type) for overlapping opsets."""


class RuleRegistry:
    """Maps (domain, op_type) and an opset to the rule that handles it."""

    def __init__(self, rules: Iterable[ChannelRule] = ()) -> None:
        self._rules: dict[tuple[str, str], list[ChannelRule]] = {}
        for r in rules:
            self.register(r)

    def register(self, rule: ChannelRule) -> None:
        """Add a rule; raises :class:`DuplicateRuleError` on an overlapping key."""
        domain = "" if rule.domain in ("", "ai.onnx") else rule.domain
        for op in rule.op_types:
            existing = self._rules.setdefault((domain, op), [])
            for other in existing:
                if rule.min_opset <= other.max_opset and other.min_opset <= rule.max_opset:
                    raise DuplicateRuleError(f"{op} ({domain or 'ai.onnx'}) is already handled by {other!r}")
            existing.append(rule)

    def lookup(self, domain: str, op_type: str, opset: int) -> ChannelRule | None:
        """The rule for an op at an opset, or None."""
        domain = "" if domain in ("", "ai.onnx") else domain
        for rule in self._rules.get((domain, op_type), ()):
            if rule.min_opset <= opset <= rule.max_opset:
                return rule
        return None

    def op_types(self) -> list[tuple[str, str]]:
        """All registered (domain, op_type) keys, sorted."""
        return sorted(self._rules)

    def rules(self) -> list[ChannelRule]:
        """All distinct rules."""
        seen: dict[int, ChannelRule] = {}
        for rs in self._rules.values():
            for r in rs:
                seen[id(r)] = r
        return list(seen.values())
