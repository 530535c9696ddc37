"""WorkNet RPC: the XML-RPC business-logic server of the WorkNet freelance marketplace."""

__version__ = "0.1.0"  # the one place: setup.cfg, --version and system.describeMethods read it
