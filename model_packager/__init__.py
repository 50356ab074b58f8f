"""Turns trained models into signed bundles; its bundle reader is what agents use.

Importing this package must stay light (no torch, no onnx): agents depend on it.
"""
