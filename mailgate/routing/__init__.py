"""Routing rules and alert sources: what the config says a new ticket is, before a person looks."""
