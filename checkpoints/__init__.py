"""Checkpointer factory (sqlite | postgres | memory) and the session index that lives beside it."""
