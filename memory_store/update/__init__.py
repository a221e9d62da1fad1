"""Changing the codebook: mapping pieces to memories (``mapping``), conflict scoring
(``conflict``), losses and the training of one memory (``losses``, ``trainer``), and the
updater that plans, trains and publishes one version (``updater``)."""
