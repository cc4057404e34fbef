"""MLflow's REST error vocabulary: an error code, its HTTP status, and the JSON shape clients parse."""

from __future__ import annotations

from typing import Any

# error_code -> HTTP status, as MLflow's server maps them (databricks_pb2 ErrorCode)
HTTP_STATUS: dict[str, int] = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "MALFORMED_REQUEST": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "INVALID_STATE": 400,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "PERMISSION_DENIED": 403,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "TEMPORARILY_UNAVAILABLE": 503,
}


class TrackingError(Exception):
    """A refused request: `error_code` is MLflow's, the message says what and which."""

    def __init__(self, message: str, error_code: str = "INVALID_PARAMETER_VALUE") -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.error_code, 400)

    def body(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message}


def not_found(message: str) -> TrackingError:
    return TrackingError(message, "RESOURCE_DOES_NOT_EXIST")
