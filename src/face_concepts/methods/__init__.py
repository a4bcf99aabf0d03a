"""Concept-extraction methods (FACE, FACE-paper, NMF, CRAFT, ICE) behind one interface."""
