"""churnml: churn and repurchase prediction from transaction and interaction logs."""

__version__ = "0.1.0"
