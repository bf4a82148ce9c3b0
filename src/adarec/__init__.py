"""adarec: scene-adaptive knowledge distillation for sequential recommendation (AdaRec)."""

__version__ = "0.1.0"
