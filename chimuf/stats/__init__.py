"""The statistics of a study, free of TensorFlow: metrics, intervals and every verdict.

    metrics.py     metrics of a binary classifier from labels and probabilities; McNemar;
                   calibration; choosing a threshold
    intervals.py   how far each number could move: Wilson for proportions, BCa bootstrap for
                   AUC, F1, average precision, balanced accuracy and the Brier score
    evidence.py    what the data can tell apart: the chance test and the comparisons, each
                   decided here, once, at 1 − confidence (Holm-adjusted within a family)

numpy and scipy only (imported inside the functions that need scipy), so the report, `chimuf
compare` and a notebook can import it; nothing here imports TensorFlow, Keras or matplotlib.
The closed-form intervals from counts live one floor down, in chimuf.core.proportions, where
the split (which has no numpy) uses them too.
"""
