"""The only place that talks to the API server: reads, server-side apply with one field manager, prune, events."""
