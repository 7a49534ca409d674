"""Header names mailgate writes and reads back to recognise its own mail."""

# Carried by every mail we send; incoming mail carrying our value is ours coming back (a loop).
LOOP_HEADER = "X-Mailgate-Loop"
