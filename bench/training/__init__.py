"""Training: backbone building and presets, the trainer (recipes, augmentation, bf16 autocast) and
the scores (WA, UA, F1)."""
