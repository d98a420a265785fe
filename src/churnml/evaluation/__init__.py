"""Evaluation: metrics, the report and drift, from arrays of labels and probabilities; knows no models."""
