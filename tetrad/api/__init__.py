"""The daemon's local API: a unix socket speaking newline-delimited JSON
(`protocol`), served by `server.ApiServer` inside the daemon and used by
`client` (tetrad getevents, status, tracingpolicy)."""
