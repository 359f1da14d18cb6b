"""The machine learning: models and their files, input pipelines, the fit loop, figures.

(The statistics, TensorFlow-free, are in chimuf.stats.)

    models.py, modelfile.py      the paper's CNNs; saving and safely loading `.keras` files
    predictor.py                 a saved model with its classes and threshold, scoring images
    seeds.py, pipeline.py,       every random stream from the one seed; batches from the cache;
    augment.py                   the paper's augmentation on the TensorFlow graph
    fit.py, callbacks.py         the resumable fit loop and the early-stopping rule
    gradcam.py                   Grad-CAM and feature maps (tf-keras-vis)
    plots.py, *_plots.py         the figures, written atomically
    tfstart.py                   starting TensorFlow quietly
    machine.py                   GPUs, oneDNN's kernels, op determinism (the run facts' half
                                 that needs TensorFlow)

TensorFlow, Keras and matplotlib are imported inside the functions that need them, except in
callbacks.py, which defines a Keras class.
"""
