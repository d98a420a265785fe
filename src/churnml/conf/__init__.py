"""Hydra's configs of the stages; a package so that Hydra finds them as ``pkg://churnml.conf``."""
