"""Serving the teams: settings, the engine that runs sessions, the `teamgraph` CLI (and later the HTTP app)."""
