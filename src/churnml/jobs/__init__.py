"""The stages: one ``run(settings)`` per command, the only code that combines the query engine,
MLflow and the console. ``churnml.cli`` wraps each in a Hydra app."""
