"""WorkNet RPC: the XML-RPC business-logic server of the WorkNet freelance marketplace."""

__version__ = "0.1.0"
