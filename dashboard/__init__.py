"""The dashboard: a web UI and JSON API over recorded calls and live activity."""
