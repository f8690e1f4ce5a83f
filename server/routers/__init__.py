"""REST routers for frontends, one per resource."""
