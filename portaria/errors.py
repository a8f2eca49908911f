"""The service's base error. Each package raises its own subclasses of it."""


class PortariaError(Exception):
    """Something a person can act on; the message says what happened and what to do."""
