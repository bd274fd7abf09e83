"""Process tracking: the cache of known processes and how they are described."""
