"""The serving side's metrics and request logs: Ray's metrics backend, the Router's metric
definitions and recorder, and one structured log line per request."""
