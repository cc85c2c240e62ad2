"""Video generators behind one protocol; see docs/models.md.

Only the light protocol types are imported here; the adapters pull in diffusers when loaded.
"""

from videogrpo.models.base import Conditioning, ModelSpec, VideoGenerator, guided_velocity

__all__ = ["Conditioning", "ModelSpec", "VideoGenerator", "guided_velocity"]
