"""XML-RPC plumbing: safe parsing, dispatch and envelopes, names, introspection, wire values."""
