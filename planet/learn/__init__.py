"""Training: the recipe, the model, augmentation, the loader, one-cycle fitting, the LR finder."""
