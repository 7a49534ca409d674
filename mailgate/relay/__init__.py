"""The staff relay: mail passed on between the requester's side and the desk's, each with the
thread headers, reply address and files for its recipient (issue 12, item 7)."""
