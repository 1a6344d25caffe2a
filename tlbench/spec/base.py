"""The base of every suite model: strict keys, no NaN, and YAML's booleans never read as numbers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

#: seeds seed torch, NumPy and Python generators: 64 bits is what all of them take
MAX_SEED = 2**63 - 1


class StrictModel(BaseModel):
    """A suite mapping: an unknown key is an error (a typo never passes silently), numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false are booleans: never let them count as the number 1 or 0."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _numeric(field.annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, optionally None), not a flag."""
    args = getattr(annotation, "__args__", None) or (annotation,)
    return any(a in (int, float) for a in args) and bool not in args
