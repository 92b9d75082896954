"""Data: feature schema, Parquet streaming per rank, converters, the planted-truth generator."""
