"""Resto Bot migration runner (container copy: only restobot.migrate is shipped)."""
