"""Built at build time (build_descriptors.py): the tally.v1 descriptor set. Not in git."""
