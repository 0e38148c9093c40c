"""Pictures for people: plots, a batch of images, and the error analysis of predictions."""
