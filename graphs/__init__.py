"""Agent teams as compiled LangGraph StateGraphs, one module per team, and the registry of teams."""
