"""One invocation's session on an object's or workflow's state, in parts that each hold one
concept: the facade a handler uses (:mod:`.facade`), the read view and its cache
(:mod:`.view`), the write buffer (:mod:`.writes`), the lease and its renewal (:mod:`.lease`),
the open / commit / purge protocol (:mod:`.protocol`), and what they share (:mod:`.target`:
the backend and the store, each seen through a small Protocol, the object and its errors)."""

from .facade import Session
from .target import Backend, SessionHost, StatePreload, Target

__all__ = ["Backend", "Session", "SessionHost", "StatePreload", "Target"]
