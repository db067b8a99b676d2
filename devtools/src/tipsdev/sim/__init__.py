"""Persona simulator: hidden reward model, in-process and NATS modes (see world.py)."""
