"""A run: built from a validated config, stepped by the loop, recorded, checkpointed, timed and
summarized."""
