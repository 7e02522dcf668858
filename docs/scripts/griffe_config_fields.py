"""Griffe extension for the API reference: the signature of a transformers config made of annotated fields.

transformers' ``PreTrainedConfig`` turns a subclass's annotated class attributes into a dataclass
``__init__`` when the class is created, which static analysis cannot see: without this, every
``VitZooConfig`` field shows as "required" and untyped. This writes that ``__init__`` from the fields.
"""

from __future__ import annotations

from typing import Any

import griffe

CONFIG_BASES = {"PreTrainedConfig", "transformers.PreTrainedConfig", "transformers.configuration_utils.PreTrainedConfig"}


class ConfigFields(griffe.Extension):
    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if "__init__" in cls.members or not {str(base) for base in cls.bases} & CONFIG_BASES:
            return
        fields = [
            member
            for member in cls.members.values()
            if not member.is_alias
            and member.is_attribute
            and member.annotation is not None
            and member.value is not None
            and member.name != "model_type"
        ]
        parameters = [
            griffe.Parameter(field.name, annotation=field.annotation, kind=griffe.ParameterKind.keyword_only, default=field.value)
            for field in fields
        ]
        self_parameter = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
        kwargs_parameter = griffe.Parameter("kwargs", kind=griffe.ParameterKind.var_keyword)
        init = griffe.Function(
            "__init__", parent=cls, returns="None", parameters=griffe.Parameters(self_parameter, *parameters, kwargs_parameter)
        )
        cls.set_member("__init__", init)
