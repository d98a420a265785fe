"""The churn and repurchase models, the classical (BTYD, rule, RFM) scores, contributions and training."""
