"""Dual encoder, tower registry, save / load."""
