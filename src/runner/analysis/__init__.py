"""Reading finished (or unfinished) run folders: oscillation figures, the report's tables and
figures."""
