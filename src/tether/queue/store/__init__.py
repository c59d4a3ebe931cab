"""Where queue state is kept: the journal (segments, group commit) and the stores built on it."""
