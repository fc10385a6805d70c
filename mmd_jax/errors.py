"""The one error family: every error a command line reports as a single
line derives from `Error`, so `main`, `sample` and `bench` catch one class
and import no module just to name its exception."""
from __future__ import annotations


class Error(Exception):
  """A failure the user can act on; str() is the whole message, one line."""


class Preempted(Error):
  """The run stopped on SIGTERM after a checkpoint; it resumes on restart.
  Commands exit 143 for it (job controllers requeue that), 2 for the rest."""
