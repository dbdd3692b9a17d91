"""Deprecated alias of :mod:`pooltender.server.killer`, removed in the next release."""

from pooltender.server._moved import moved

__getattr__ = moved(__name__, "pooltender.server.killer", globals())
