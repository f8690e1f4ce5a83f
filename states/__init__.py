"""What a session of each team holds: a versioned pydantic model per team state, and the migrations between versions.

The models are the source of truth for a session's shape (graphs/ declares the same channels for LangGraph, and a
test keeps the two equal); they live here, apart from graphs/, so nodes and the API can import them.
"""
