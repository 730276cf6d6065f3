"""Specialist models behind one interface: load, predict on a batch, describe."""
