"""Test and demo harness: locally built images and a local VPS container (no registry here)."""
