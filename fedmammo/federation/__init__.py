"""Flower apps: the centre (ClientApp), the orchestrator (ServerApp), strategies, egress guard.

This is the only package that imports flwr.
"""
