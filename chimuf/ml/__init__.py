"""The machine learning: the networks, their files, the training and the figures.

(The statistics, TensorFlow-free, are in chimuf.stats.)

    architectures/   the paper's CNNs and the tuned family, the modern recipe, the pretrained
                     backbone, the user's own builders, chimuf's fused batch normalisation
    modelfiles/      saving and safely loading `.keras` files, predicting with them, exports
    training/        the resumable fit loop and its stopping rules, the input pipeline and
                     augmentation, seeds, callbacks, TensorBoard, the speed probe, the worker pool
    plots/           the figures, written atomically
    gradcam.py       Grad-CAM and feature maps (tf-keras-vis)
    tfstart.py       starting TensorFlow quietly, its threads fixed
    machine.py       GPUs, oneDNN's kernels, op determinism (the run facts' half that needs TensorFlow)

TensorFlow, Keras and matplotlib are imported inside the functions that need them, except in the
modules that define classes deriving from theirs (training/callbacks.py, architectures/fusednorm.py).
"""
