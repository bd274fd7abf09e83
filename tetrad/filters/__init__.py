"""Selecting and shaping events with Tetragon's filter syntax: allow/deny
lists (`match`), field filters (`fields`), redaction (`redaction`) and the
export rate limit (`ratelimit`).  Used by the daemon's export, by the API
server for each client's stream, and by `tetrad getevents` on stdin."""
