"""Each team's state model (states/) declares exactly the channels its graph has, and a version with a migration
path to it."""

from __future__ import annotations

import pytest

from graphs.registry import GRAPH_MODULES, graph_builder
from states.migrations import MIGRATIONS, TEAMS, current_version


@pytest.mark.parametrize("graph_id", sorted(GRAPH_MODULES))
def test_state_model_fields_are_the_graph_channels(graph_id: str) -> None:
    assert graph_id in TEAMS, f"graphs/{graph_id}.py has no state model in states/migrations.py TEAMS"
    compiled = graph_builder(graph_id)(None, None)
    channels = {name for name in compiled.channels if not name.startswith("__") and not name.startswith("branch:")}
    assert channels == set(TEAMS[graph_id].model.model_fields)


@pytest.mark.parametrize("graph_id", sorted(TEAMS))
def test_every_version_step_has_a_migration(graph_id: str) -> None:
    for version in range(2, current_version(graph_id) + 1):
        assert (graph_id, version) in MIGRATIONS
