"""Offline training package: architectures, datasets, the one preprocessing path, export and load."""
