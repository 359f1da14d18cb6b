"""Figures: matplotlib set-up and atomic figure files, and the figures of each part of the study."""
