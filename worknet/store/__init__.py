"""Database access: the txmongo pool service, indexes, transactions and the embedded server."""

from worknet.store.pool import MongoStore

__all__ = ["MongoStore"]
