"""The order of operations: build, parallelize, loop, evaluate, checkpoint, record metrics."""
