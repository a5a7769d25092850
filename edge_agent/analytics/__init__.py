"""Edge analytics: SQL over windows of the spooled telemetry, each window's result rows
emitted into the spool exactly once (docs/ANALYTICS.md)."""
