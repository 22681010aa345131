"""Dataset generators for ``setpipe datagen``: every one seeded and deterministic."""
