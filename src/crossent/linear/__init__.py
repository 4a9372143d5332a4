"""Losses computed next to the layer that produces the logits: vocab-parallel losses
(:mod:`crossent.linear._vocab`), where each rank holds a contiguous slice of the classes."""
