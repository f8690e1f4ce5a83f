"""Node functions: pure (state, config) -> partial update, one module per node."""
