"""Tools people run besides the daemon."""
