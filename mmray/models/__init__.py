"""Models: encoders per modality, fusion heads, and the registry that builds them by name."""

from mmray.models.registry import BACKBONES, FUSIONS, Encoders, build_model, register_backbone, register_fusion
from mmray.models.model import AVModel, AVOutput

# Importing the modules registers their backbones and fusions.
from mmray.models import backbones as _backbones  # noqa: F401,E402
from mmray.models import fusion as _fusion  # noqa: F401,E402

__all__ = ["AVModel", "AVOutput", "BACKBONES", "Encoders", "FUSIONS", "build_model", "register_backbone", "register_fusion"]
