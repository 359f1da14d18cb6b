"""From a folder of images to decoded pixels: audit, split, cache. No TensorFlow.

    imagefile.py  opening one file safely (format by content, size limits, conversion to RGB)
    audit.py      every file with a verdict; exact and near duplicates      (study stage `audit`)
    split.py      stratified, duplicate-aware train/validation/test; folds  (stage `split`)
    cache.py      every usable image decoded once into a uint8 array        (stage `cache`)
"""
