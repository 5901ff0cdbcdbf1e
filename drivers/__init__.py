"""Device drivers: one sub-package per protocol."""
