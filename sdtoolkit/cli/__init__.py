"""Command-line interfaces: shared flag parsing and the main() of each CLI."""
