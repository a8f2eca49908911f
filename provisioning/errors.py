"""Errors of provisioning: decisions that cannot be taken, users that cannot be made."""

from portaria.errors import PortariaError


class ProvisioningError(PortariaError):
    """A request, decision or user change that cannot be carried out."""


class RequestNotFound(ProvisioningError):
    """No access request has the given id."""


class RequestNotPending(ProvisioningError):
    """Only pending requests can be approved or rejected."""


class UserAlreadyExists(ProvisioningError):
    """The directory already has a user with that email."""


class InvalidToken(ProvisioningError):
    """A set-password link that is unknown, used or expired."""
