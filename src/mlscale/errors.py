"""Errors a user can cause, typed once so every edge (HTTP, CLI) maps them the same way."""


class MlscaleError(Exception):
    """Base of every error mlscale raises on purpose; ``status`` is the HTTP status it maps to."""

    status = 500


class InvalidInput(MlscaleError):
    """The request or the input data is malformed (HTTP 400)."""

    status = 400


class ConfigError(MlscaleError):
    """A configuration file or a model's settings are wrong (exit 2 on the command line)."""

    status = 400


class NotFound(MlscaleError):
    """Something named by the user does not exist (HTTP 404)."""

    status = 404


class ModelNotFound(NotFound):
    """The model, version or alias is not in the repository."""


class ModelNotReady(MlscaleError):
    """The model exists but is not loaded (HTTP 400, as Triton answers)."""

    status = 400


class Overloaded(MlscaleError):
    """The server sheds this request; the client should retry after ``retry_after`` seconds
    (HTTP 503 with Retry-After)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VersionRetired(Overloaded):
    """The model version a request was routed to is closing (replaced or unloaded) before the
    request reached its queue. The inference path routes such a request again; a client sees it
    (503) only when no version is left to take it."""

    def __init__(self, message: str = "the model version is being unloaded") -> None:
        super().__init__(message)


class DeadlineExceeded(MlscaleError):
    """The request's deadline passed before its answer was ready (HTTP 504)."""

    status = 504


class RequestTimeout(MlscaleError):
    """The client sent its request too slowly (HTTP 408); the connection is closed."""

    status = 408


class PayloadTooLarge(MlscaleError):
    """The request body is larger than the configured limit (HTTP 413)."""

    status = 413


class ServiceUnavailable(MlscaleError):
    """A backing service (Redis, a shard) cannot be reached in time."""

    status = 503


class Unauthorized(MlscaleError):
    """No credentials, or credentials that do not verify (HTTP 401 with WWW-Authenticate).
    The message never repeats the credential."""

    status = 401

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        # RFC 6750 error code for the challenge: None when no credentials were sent at all.
        self.error = error

    def challenge(self) -> bytes:
        """The WWW-Authenticate header value."""
        value = 'Bearer realm="mlscale"'
        if self.error:
            value += f', error="{self.error}"'
        return value.encode()


class Forbidden(MlscaleError):
    """The credentials are valid but lack the scope the route needs (HTTP 403)."""

    status = 403


class RateLimited(MlscaleError):
    """The caller's quota is spent; retry after ``retry_after`` seconds (HTTP 429 with Retry-After)."""

    status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
