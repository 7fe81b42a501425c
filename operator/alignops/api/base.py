"""The base of every API model: camelCase aliases on the wire, snake_case in Python, strict types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def camel_case(snake: str) -> str:
    """A field's name in manifests: the alias every ApiModel field gets, so that messages and CEL
    rules name a field as users spell it (``reward_model`` -> ``rewardModel``)."""
    return to_camel(snake)


class ApiModel(BaseModel):
    """Manifests use camelCase only (as the CRD does); strict mode refuses "3" for a number and
    unknown fields are errors, so a misspelt field is never silently ignored."""

    model_config = ConfigDict(
        alias_generator=camel_case,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        frozen=False,
    )

    def to_wire(self) -> dict:
        """The manifest form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
