"""The models shipped with the package, by name: ``SHIPPED_MODELS`` is the one list that
``videofusion sample --model``, ``info``, ``eval``, the studio and ``make demo`` read.

Each is a VideoFusionPipeline folder beside this file with its model card (README.md). A name
may be listed before its folder is installed (a model still to be trained): asking for it is
then one clear error, and the demo and the studio leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ShippedModel:
    """A shipped model: its folder and an example prompt of its data (demo, studio)."""

    name: str
    folder: Path
    title: str  # what the data is, in words
    example_labels: tuple[int, ...] = ()
    example_caption: str | None = None
    recipe: str = ""  # how its folder is made, for the "not installed" error

    @property
    def installed(self) -> bool:
        return (self.folder / "model_index.json").is_file()


SHIPPED_MODELS = {model.name: model for model in (
    ShippedModel("digits", ASSETS_DIR / "default_model", "moving digits", (0, 3, 5, 7),
                 "a red digit 3 moving down and to the left",
                 "videofusion train --config configs/moving_digits_bundled.yaml, then "
                 "python scripts/bundle_model.py"),
    ShippedModel("physics", ASSETS_DIR / "physics_model", "rendered physics", (0, 1, 2, 3),
                 "a cheetah running", "python scripts/train_physics.py, see docs/training.md "
                                      "'The physics model'"),
)}
DEFAULT_MODEL = "digits"
# The bundled VideoFusionPipeline that `videofusion sample` uses without --model.
DEFAULT_MODEL_DIR = SHIPPED_MODELS[DEFAULT_MODEL].folder


def shipped_model(name: str, models: dict[str, ShippedModel] | None = None) -> ShippedModel:
    """The shipped model ``name``; ``ValueError`` (one line) if unknown or not installed."""
    models = SHIPPED_MODELS if models is None else models
    if name not in models:
        raise ValueError(f"unknown shipped model {name!r}; choose from {', '.join(models)}")
    model = models[name]
    if not model.installed:
        raise ValueError(f"the shipped model {name!r} ({model.title}) is not installed in this "
                         f"package (no model in {model.folder}); it is built by {model.recipe}")
    return model


def installed_models(models: dict[str, ShippedModel] | None = None) -> dict[str, ShippedModel]:
    """The shipped models whose folder is present, in ``SHIPPED_MODELS`` order."""
    models = SHIPPED_MODELS if models is None else models
    return {name: model for name, model in models.items() if model.installed}
