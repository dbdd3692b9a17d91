"""Deprecated alias of :mod:`pooltender.server.doctor`, removed in the next release."""

from pooltender.server._moved import moved

__getattr__ = moved(__name__, "pooltender.server.doctor", globals())
