"""Pictures for people: plots and a batch of images."""
