"""Model files: saving and safely loading `.keras` files (untrusted input: inventory, size caps,
parameters counted before Keras builds anything), predicting with them, exporting them."""
