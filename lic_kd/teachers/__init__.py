"""Teachers shipped: exported in CompressAI's format, and ladders of them with their provenance."""
