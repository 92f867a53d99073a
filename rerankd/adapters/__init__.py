"""Scoring engines and model formats. Nothing here knows about HTTP."""
