"""Benchmarks (not tests): Teamgraph's server vs in-process LangGraph vs `langgraph dev`; docs/performance.md."""
