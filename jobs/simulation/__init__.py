"""Simulation: the handbook transaction simulator and the catalogue of bad landing files."""
