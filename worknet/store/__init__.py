"""Database access: the txmongo pool service, indexes, transactions and the embedded server."""

from worknet.store.interface import Capabilities, Session, Store
from worknet.store.pool import MongoStore

__all__ = ["Capabilities", "MongoStore", "Session", "Store"]
