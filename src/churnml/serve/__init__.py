"""Real-time scoring: the event store, the online scorer and the HTTP app."""
