"""The servers the transport benchmark compares the daemon with."""
