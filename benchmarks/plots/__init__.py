"""Plots and markdown reports from recorded results."""
