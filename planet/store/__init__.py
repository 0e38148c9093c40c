"""Where data is kept: original-image shards, sized shards, the validation split, labels."""
