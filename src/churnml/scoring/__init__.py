"""Scores a retention team acts on: bands, reasons, segments and actions, in batch and on Spark."""
