"""Reply commands of the dispatcher desk: parsing (pure), and what a sender may do."""
