"""The XenAPI datamodel as data: the single source of truth for everything else."""

from pyxapi.model.errors import ApiError
from pyxapi.model.schema import ClassDef, FieldDef, MessageDef, Model, ParamDef, Relation, load_model

__all__ = ["ApiError", "ClassDef", "FieldDef", "MessageDef", "Model", "ParamDef", "Relation", "load_model"]
