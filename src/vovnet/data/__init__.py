"""Datasets: embedded and downloadable classification sets, image folders, and task-specific sources."""
