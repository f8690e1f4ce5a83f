"""A tenant other than Veneo that enables veneo_chat (README, "To add a tenant") hears its own name: in the
knowledge-base footer, the refusal, the voice instructions and preview, the team's description and GET /teams
(`tenant_name`, what the web page labels the chat with). They said "Veneo" to every tenant, and the safety reviewer
let Veneo's support address through for everyone. Veneo's own resolved settings are unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from graphs import veneo_chat
from personas.loader import DEFAULT_BUNDLE_DIR, BundleError, load_bundles
from personas.resolver import AgentTeamResolver
from personas.voice import effective_voice, load_catalog
from server.app import create_app
from server.settings import Settings
from server.voice.realtime import realtime_instructions
from tests.conftest import run_config

ACME_KEY = "acme-test-key"
ACME = f"""\
id: acme
name: Acme
enabled_teams: [veneo_chat]
default_team: veneo_chat
knowledge: knowledge/acme.md
api_keys:
  - {{id: acme-app, sha256: {hashlib.sha256(ACME_KEY.encode()).hexdigest()}}}
"""
KNOWLEDGE = """\
# Acme knowledge base

## Warranty
Every Acme anvil has a ten-year warranty against cracks. Send a photo to support@acme.example to claim it.
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The shipped bundles plus tenant acme (its own knowledge file, no overrides)."""
    root = tmp_path / "personas"
    shutil.copytree(DEFAULT_BUNDLE_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "tenants" / "acme.yaml").write_text(ACME)
    (root / "knowledge" / "acme.md").write_text(KNOWLEDGE)
    return root


def chat(root: Path, tenant: str, *texts: str) -> list[str]:
    resolver = AgentTeamResolver(load_bundles(root))
    graph = veneo_chat.build_graph(InMemorySaver(), InMemoryStore())
    config: Any = run_config(resolver, tenant, "veneo_chat")
    out = []
    for text in texts:
        state = asyncio.run(graph.ainvoke({"messages": [HumanMessage(text)]}, config))
        reply = state["messages"][-1]
        assert isinstance(reply, AIMessage)
        out.append(str(reply.content))
    return out


def test_another_tenant_s_chat_answers_and_refuses_in_its_own_name(root: Path) -> None:
    answer, refusal, unknown = chat(
        root, "acme", "What is the warranty on anvils?", "Where can I buy a gun?", "Do you sell rockets?"
    )
    assert answer.endswith("(Answered from Acme's knowledge base: Warranty.)"), answer
    assert refusal == "Sorry, I can't help with that. I'm happy to help with questions about Acme."
    assert unknown.startswith("I don't know that from Acme's knowledge base."), unknown
    assert "orders, shipping, returns" not in unknown  # Veneo's topics, not Acme's
    assert not [t for t in (answer, refusal, unknown) if "Veneo" in t or "veneo" in t]
    # no address is allowed unless the tenant lists it (Veneo's allowance was everyone's)
    assert "Send a photo to [email removed] to claim it." in answer
    run = AgentTeamResolver(load_bundles(root)).resolve("acme", "veneo_chat")
    assert run.tenant_name == "Acme" and run.persona("safety_reviewer").safety.pii_allow == []


def test_the_documented_overrides_allow_the_tenant_s_address_and_remap_a_node(root: Path) -> None:
    (root / "agents" / "acme_responder.yaml").write_text(
        (root / "agents" / "primary_responder.yaml").read_text().replace("id: primary_responder", "id: acme_responder")
    )
    (root / "tenants" / "acme.yaml").write_text(
        ACME
        + """\
overrides:
  agents:
    safety_reviewer:
      safety:
        pii_allow: [support@acme.example]
        refusal_message: "Acme can't help with that, sorry."
    acme_responder:
      prompts:
        not_found: "{tenant_name} has no answer to that; call the anvil desk."
  teams:
    veneo_chat:
      nodes:
        primary_responder: acme_responder
"""
    )
    answer, refusal, unknown = chat(
        root, "acme", "What is the warranty on anvils?", "Where can I buy a gun?", "Do you sell rockets?"
    )
    assert "Send a photo to support@acme.example to claim it." in answer
    assert refusal == "Acme can't help with that, sorry."
    assert unknown == "Acme has no answer to that; call the anvil desk."


def test_veneo_still_answers_as_before() -> None:
    answer, refusal, unknown = chat(
        DEFAULT_BUNDLE_DIR, "veneo", "How long does shipping take?", "Where can I buy a gun?", "Do you sell rockets?"
    )
    assert answer.endswith("(Answered from Veneo's knowledge base: Shipping times.)")
    assert refusal == "Sorry, I can't help with that. I'm happy to help with questions about Veneo."
    assert unknown.endswith("or you can reach a person at support@veneo.example.")  # its own address, allowed


def test_voice_instructions_and_preview_name_the_tenant(root: Path) -> None:
    bundles = load_bundles(root)
    run = AgentTeamResolver(bundles).resolve("acme", "veneo_chat")
    voice = effective_voice(bundles, load_catalog(root), run)
    instructions = realtime_instructions(voice, run, {})
    assert "You are Acme's friendly assistant." in instructions
    assert "speaking with a customer of Acme by voice" in instructions  # was "a Acme customer"
    assert "passed Acme's safety review" in instructions
    assert "questions about Acme." in instructions
    assert "your Acme order today?" in voice.settings.preview_text
    assert "Veneo" not in instructions + voice.settings.preview_text


def test_get_teams_gives_the_page_the_tenant_s_name(root: Path, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db", personas_dir=root)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        acme = client.get("/teams", headers={"Authorization": f"Bearer {ACME_KEY}"}).json()
        veneo = client.get("/teams", headers={"Authorization": "Bearer tg-veneo-key"}).json()
        demo = client.get("/teams", headers={"Authorization": "Bearer tg-demo-key"}).json()
    assert [(t["id"], t["tenant_name"], t["hint"]) for t in acme] == [("veneo_chat", "Acme", "")]  # the page's own
    assert [t["hint"] for t in veneo if t["id"] == "veneo_chat"] == [
        "Ask anything about Veneo: orders, shipping, returns…"
    ]
    assert acme[0]["description"].startswith("Acme's general chat;")
    assert {t["tenant_name"] for t in veneo} == {"Veneo"} and veneo[0]["description"].startswith("Veneo's general")
    assert {t["tenant_name"] for t in demo} == {"Demo tenant (interview practice)"}
    # what the page makes of it (server/web/static/main.js teamName, chat.js): the label comes from this field
    static = Path(__file__).resolve().parents[2] / "server" / "web" / "static"
    assert "Veneo" not in (static / "main.js").read_text() + (static / "chat.js").read_text()
    assert "tenant_name" in (static / "main.js").read_text()


def test_a_tenant_name_with_braces_is_refused(root: Path) -> None:
    (root / "tenants" / "acme.yaml").write_text(ACME.replace("name: Acme", "name: Acme {beta}"))
    with pytest.raises(BundleError) as err:
        load_bundles(root)
    assert any("acme.yaml" in str(p) and "name" in str(p) for p in err.value.problems), err.value.problems


def test_a_question_that_names_the_tenant_is_not_answered_by_any_section_naming_it(root: Path) -> None:
    # every Acme section may say "Acme": the name alone matched the warranty section (Veneo's was hard-coded)
    rockets, warranty = chat(root, "acme", "Does Acme sell rockets?", "What is Acme's warranty?")
    assert rockets.startswith("I don't know that from Acme's knowledge base."), rockets
    assert warranty.endswith("(Answered from Acme's knowledge base: Warranty.)"), warranty
    (veneo_rockets,) = chat(DEFAULT_BUNDLE_DIR, "veneo", "Does Veneo sell rockets?")
    assert veneo_rockets.startswith("I don't know that from Veneo's knowledge base."), veneo_rockets


def _tenant(root: Path, tenant_id: str, name: str) -> None:
    """A tenant with Veneo's knowledge file and the given name."""
    shutil.copy(root / "knowledge" / "veneo.md", root / "knowledge" / f"{tenant_id}.md")
    (root / "tenants" / f"{tenant_id}.yaml").write_text(
        ACME.replace("id: acme", f"id: {tenant_id}")
        .replace("name: Acme", f"name: {name}")
        .replace("knowledge/acme.md", f"knowledge/{tenant_id}.md")
        .replace("acme-app", f"{tenant_id}-app")
    )


def test_a_word_of_the_tenant_s_name_still_counts_when_it_is_the_topic(root: Path) -> None:
    # only the name as a whole phrase (or the id) is left out: each word of it was, so "Returns Plus" could not be
    # asked about returns, and search (dropping "ordering") and the coverage check (dropping the stem "order")
    # disagreed for "Ordering Co"
    _tenant(root, "acme-returns", "Returns Plus")
    _tenant(root, "ordering", "Ordering Co")
    returns, named, by_id, rockets = chat(
        root,
        "acme-returns",
        "How do returns work?",
        "How do Returns Plus returns work?",
        "How do acme-returns returns work?",
        "Does Returns Plus sell rockets?",
    )
    for reply in (returns, named, by_id):
        assert reply.endswith("(Answered from Returns Plus's knowledge base: Returns and refunds.)"), reply
    assert rockets.startswith("I don't know"), rockets
    order, named_order, our_rockets = chat(
        root,
        "ordering",
        "Where is my order?",
        "Where is my Ordering Co order?",
        "Does Ordering Co's shop sell rockets?",
    )
    assert order.endswith("(Answered from Ordering Co's knowledge base: Order tracking.)"), order
    assert named_order.endswith("(Answered from Ordering Co's knowledge base: Order tracking.)"), named_order
    assert our_rockets.startswith("I don't know"), our_rockets


def test_a_tenant_name_too_long_for_the_texts_it_fills_is_a_problem_in_the_tenant_file(root: Path) -> None:
    # a 1000-character name made `teamgraph personas validate` print a traceback (the filled preview_text over its
    # limit, re-validated at resolve time); the name has a limit, and a filled text over its own names the tenant
    from typer.testing import CliRunner

    from server.cli import app

    (root / "tenants" / "acme.yaml").write_text(ACME.replace("name: Acme", "name: " + "A" * 1000))
    result = CliRunner().invoke(app, ["personas", "validate", str(root)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "acme.yaml:2: name: String should have at most 80 characters" in result.output, result.output
    assert "Traceback" not in result.output
    longest = "A" * 80
    (root / "tenants" / "acme.yaml").write_text(ACME.replace("name: Acme", f"name: {longest}"))
    run = AgentTeamResolver(load_bundles(root)).resolve("acme", "veneo_chat")  # the longest name fills every text
    preview = effective_voice(load_bundles(root), load_catalog(root), run).settings.preview_text
    assert len(preview.replace("{voice_name}", "Sage")) <= Settings(_env_file=None).voice_preview_max_chars  # type: ignore[call-arg]
    (root / "tenants" / "acme.yaml").write_text(
        ACME.replace("name: Acme", f"name: {longest}")
        + "overrides:\n  teams:\n    veneo_chat:\n      voice:\n        preview_text: "
        + '"'
        + "{tenant_name} says hi. " * 20
        + '"\n'
    )
    with pytest.raises(BundleError) as err:
        load_bundles(root)
    assert [str(p) for p in err.value.problems] == [
        "personas/tenants/acme.yaml:12: overrides.teams.veneo_chat.voice.preview_text: with the tenant's name "
        "filled in: String should have at most 1000 characters"
    ]
    # the team's own text: the name is at fault
    (root / "tenants" / "acme.yaml").write_text(ACME.replace("name: Acme", f"name: {longest}"))
    team = root / "teams" / "veneo_chat.yaml"
    team.write_text(team.read_text().replace("How can I help you with your {tenant_name} order", "{tenant_name} " * 60))
    with pytest.raises(BundleError) as err:
        load_bundles(root)
    assert [str(p) for p in err.value.problems] == [
        "personas/tenants/acme.yaml:2: name: with the tenant's name filled in: "
        "String should have at most 1000 characters"
    ]


def test_the_api_schema_describes_the_chat_for_any_tenant(tmp_path: Path) -> None:
    # /openapi.json is one document for every tenant: it showed the unfilled "{tenant_name}'s general chat"
    settings = Settings(_env_file=None, checkpoint_url=f"sqlite:///{tmp_path}/tg.db")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        text = client.get("/openapi.json").text
    assert "{tenant_name}" not in text
    assert "the tenant's general chat;" in text
