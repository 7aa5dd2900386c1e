"""Offline training package: architectures, datasets, one preprocessing path, export, load."""
