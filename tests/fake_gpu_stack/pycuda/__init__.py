"""Fake pycuda (tests only): one device that can be initialized, never used for inference."""

VERSION_TEXT = "2024.1-fake"
