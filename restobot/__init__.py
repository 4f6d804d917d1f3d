"""Resto Bot deploy: settings, rendering, migrations, workflows, releases."""
