"""Files shipped with the package: the default model (``default_model/``, see its README.md)."""

from pathlib import Path

# The bundled VideoFusionPipeline: `videofusion sample` without --model-dir, `make demo`.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
