"""Values of per-resource state to bytes and back: msgpack, through a pydantic model when the
instance has a ``state_model``, within ``max_state_bytes``.

A value msgpack cannot encode, or that the model refuses, is an ``InvalidRequestError`` naming
``state`` (400); an encoding over the limit is a ``StateTooLargeError`` (413). Either way nothing is
stored: encoding happens before anything is sent.
"""

from __future__ import annotations

from typing import Any

import msgpack
from pydantic import BaseModel, ValidationError

from resource_router.errors import InvalidRequestError, StateTooLargeError
from resource_router.settings import DEFAULT_MAX_STATE_BYTES

__all__ = ["StateCodec"]


class StateCodec:
    """Encodes and decodes the state values of one instance (see the module docstring)."""

    __slots__ = ("max_bytes", "model")

    def __init__(self, model: type[BaseModel] | None = None, max_bytes: int = DEFAULT_MAX_STATE_BYTES) -> None:
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise InvalidRequestError("state_model must be a pydantic model class", field="state_model")
        self.model = model
        self.max_bytes = max_bytes

    def encode(self, value: Any) -> bytes:
        model = self.model
        if model is not None:
            try:
                checked = value if isinstance(value, model) else model.model_validate(value)
            except ValidationError as exc:
                raise InvalidRequestError(
                    f"state does not fit {model.__name__}: {exc.errors()[0].get('msg', exc)}", field="state"
                ) from exc
            value = checked.model_dump(mode="json")
        try:
            data: bytes = msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequestError(
                f"state cannot be encoded with msgpack ({type(value).__name__}: {exc})", field="state"
            ) from exc
        if len(data) > self.max_bytes:
            raise StateTooLargeError(
                f"state is {len(data)} bytes encoded, over max_state_bytes={self.max_bytes}",
                size=len(data),
                limit=self.max_bytes,
            )
        return data

    def decode(self, data: bytes) -> Any:
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise InvalidRequestError(f"stored state is not msgpack: {exc}", field="state") from exc
        model = self.model
        if model is None:
            return value
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise InvalidRequestError(f"stored state does not fit {model.__name__}: {exc}", field="state") from exc
