"""Service levels: business-hours calendars, the targets a ticket is promised, and the scans that
keep the promises (warnings, escalations, reminders, auto-close)."""
