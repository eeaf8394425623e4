"""Disentangled channels (InfoDisent, EPIC): an interpretable head and a prototype source."""
