"""Pages: the memory and disk tiers, read-ahead, and the chain of page sources."""
