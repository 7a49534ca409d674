"""The one way mail comes in: ingest(raw_bytes, source)."""
