"""The environment variables Teamgraph reads, as plain names (standard library only).

`teamgraph personas validate` refuses a tenant key variable (`api_keys[].env`) that is one of them without importing
the settings (pydantic-settings): tenant `openai`'s key named by the README's rule, TEAMGRAPH_OPENAI_API_KEY, is the
provider key setting's variable, and either would be read as the other. tests/unit_tests/test_settings_names.py
checks SETTING_VARIABLES against server.settings.Settings.
"""

from __future__ import annotations

# every variable a field of server.settings.Settings is read from: TEAMGRAPH_<FIELD> and the fields' aliases
SETTING_VARIABLES = frozenset(
    {
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "TEAMGRAPH_ALLOW_DEV_KEYS",
        "TEAMGRAPH_CHECKPOINT_URL",
        "TEAMGRAPH_CORS_ORIGINS",
        "TEAMGRAPH_DATA_DIR",
        "TEAMGRAPH_DB_STATEMENT_TIMEOUT_S",
        "TEAMGRAPH_DB_TIMEOUT_S",
        "TEAMGRAPH_DOCUMENT_READ_TIMEOUT_S",
        "TEAMGRAPH_DURABILITY",
        "TEAMGRAPH_HOST",
        "TEAMGRAPH_KEEP_ALIVE_S",
        "TEAMGRAPH_LOG_FORMAT",
        "TEAMGRAPH_LOG_LEVEL",
        "TEAMGRAPH_MAX_BODY_BYTES",
        "TEAMGRAPH_MAX_UPLOAD_BYTES",
        "TEAMGRAPH_METRICS_TOKEN",
        "TEAMGRAPH_MODEL_BASE_URL",
        "TEAMGRAPH_OPENAI_API_KEY",
        "TEAMGRAPH_PERSONAS_DIR",
        "TEAMGRAPH_PLAYGROUND",
        "TEAMGRAPH_PORT",
        "TEAMGRAPH_RETENTION_INTERVAL_S",
        "TEAMGRAPH_SHUTDOWN_WAIT_S",
        "TEAMGRAPH_STORAGE_WATCH_S",
        "TEAMGRAPH_TURN_LOCK_KEEPALIVE_COUNT",
        "TEAMGRAPH_TURN_LOCK_KEEPALIVE_IDLE_S",
        "TEAMGRAPH_TURN_LOCK_KEEPALIVE_INTERVAL_S",
        "TEAMGRAPH_TURN_LOCK_TCP_USER_TIMEOUT_S",
        "TEAMGRAPH_TURN_WAIT_S",
        "TEAMGRAPH_VOICE_CACHE_DIR",
        "TEAMGRAPH_VOICE_CACHE_MAX_MB",
        "TEAMGRAPH_VOICE_PREVIEW_MAX_CHARS",
        "TEAMGRAPH_WORKERS",
    }
)

# TEAMGRAPH_ variables read outside Settings (by the module that needs them), and by the tests and benchmarks
OTHER_VARIABLES = {
    "TEAMGRAPH_BLAS_THREADS": "nodes/embedder.py",
    "TEAMGRAPH_TEST_POSTGRES_URL": "tests",
    "TEAMGRAPH_TEST_CHROMIUM": "tests/browser",
    "TEAMGRAPH_BENCH_POSTGRES_URL": "bench",
    "TEAMGRAPH_BENCH_PROFILE_OUT": "bench",
    "TEAMGRAPH_BENCH_DEV_DB": "bench",
    "TEAMGRAPH_BENCH_ABLATE": "bench",
    "TEAMGRAPH_BENCH_BUNDLE_DIR": "bench",
}

# what a tenant's `api_keys[].env` may not name (personas.loader.load_bundles(reserved_variables=...))
RESERVED_VARIABLES = SETTING_VARIABLES | set(OTHER_VARIABLES)
