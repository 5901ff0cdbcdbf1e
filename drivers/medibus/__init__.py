"""Dräger MEDIBUS slow-data driver: codec, device payloads, session and a ventilator simulator."""
