"""Secret masking: the rule engine, JSON-aware and streaming maskers (docs/masking.md)."""
from recorder.masking.engine import KNOWN_RULE_ID, Masker, Rule, RuleError, Span, mask_tag
from recorder.masking.sse_masker import SseMasker
from recorder.masking.stream import StreamMasker

__all__ = ["KNOWN_RULE_ID", "Masker", "Rule", "RuleError", "Span", "SseMasker", "StreamMasker", "mask_tag"]
