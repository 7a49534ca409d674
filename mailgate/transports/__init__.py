"""Ways mail comes in: thin callers of ingest() that acknowledge only after it committed."""
