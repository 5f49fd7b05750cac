"""Data pipeline: source converters and the synthetic document/UI set, all emitting one canonical row schema."""
