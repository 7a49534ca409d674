"""Outgoing mail: compose (templates -> message), outbox (queued rows, claims, delivery
outcomes) and sender (the transports and the daemon's delivery loop)."""
