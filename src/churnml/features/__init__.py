"""Point-in-time features at an ``as_of`` date, labels after it, and training snapshots."""
