"""Voice for every team: the voice catalog, previews, realtime session bootstrap and spoken transcripts.

One service (`VoiceService`) serves both teams; each team's voice parameters come from its persona bundles
(`personas/voice.py` layers them). A spoken user turn runs as a turn of the session's graph, exactly like a
typed one; provider calls go through the `openai` SDK with the models' base URL, key and timeout.
"""

from server.voice.errors import VoiceError
from server.voice.service import VoiceService

__all__ = ["VoiceError", "VoiceService"]
