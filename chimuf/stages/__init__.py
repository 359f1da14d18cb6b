"""The study's stages that train or analyse models, one module per paper section.

    train.py     the six trainings and the final model (paper 4-6)
    tune.py      the Bayesian search over the model-3 family (paper 6)
    evaluate.py  the final model on the test split (paper 7)
    kfold.py     n-fold cross-validation (paper 8), with every image's out-of-fold prediction
    labels.py    suspect labels from the out-of-fold predictions, duplicates as thumbnails (new)
    explain.py   kernels, activation maps, Grad-CAM (paper 9)

Each takes the engine's StageContext, plain values and upstream outcomes, and returns its outcome
(chimuf.core.results); chimuf.study calls them in order. The data stages are in chimuf.data.
"""
