"""Single-device, comms-free model code: embedding tables, dense arches, FLOPs, the registry."""
