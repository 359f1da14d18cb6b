"""The networks: the paper's three CNNs and the tuned family, the modern recipe, the pretrained
backbone, the user's own builders, and chimuf's own layers."""
