"""Datasets: naming conventions and loading (real or phantom NIfTI), validation, preprocessing, the phantom."""
