"""Video generators behind one protocol; see docs/models.md.

Only the light protocol types are imported here; `videogrpo.embedded.tiny_wan` pulls in diffusers.
"""

from videogrpo.models.base import PromptEmbeddings, VideoGenerator, guided_velocity

__all__ = ["PromptEmbeddings", "VideoGenerator", "guided_velocity"]
