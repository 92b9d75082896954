"""The expert-slot protocol, by its first name (it lives in ``recscale.sharding.checkpoint.experts``)."""

from recscale.sharding.checkpoint.experts import ExpertSharded, ExpertSlot, expert_slots

__all__ = ["ExpertSharded", "ExpertSlot", "expert_slots"]
