"""pairroom-classroom: quick polls and a timer for mentor sessions."""

from .extension import Classroom

__all__ = ["Classroom"]
