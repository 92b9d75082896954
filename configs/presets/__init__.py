"""The shipped YAML presets (package data: ``recscale presets`` lists them)."""
