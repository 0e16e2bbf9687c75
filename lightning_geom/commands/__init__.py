"""Subcommands of `lightning-geom` (each imports its heavy dependencies only when it runs)."""
