"""Inference: TTA predictions, thresholds (or the clip) and the submission file."""
