"""Everything that knows ranks: planner, DMP, dense DDP / DeepSpeed, the ordered ``parallelize()``."""
