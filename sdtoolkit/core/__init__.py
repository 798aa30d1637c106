"""Core: DDIM math, attention processors, model loading, mapping networks, words, settings, checks, file I/O."""
