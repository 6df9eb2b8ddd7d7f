"""Test doubles that speak real wire formats (no mocks of our own code)."""
