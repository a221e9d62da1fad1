"""Routing a key to a memory or to the base model: the FAISS index over stored keys (``index``),
the learned gate (``gate``) and the two together (``router``)."""
