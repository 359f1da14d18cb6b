"""The paper's own results, as it prints them (paper.txt sections 6 and 7).

One owner for them: the evaluation weighs this run's test accuracy against the paper's
(chimuf.stats.evidence), and the report prints them beside the run's (chimuf.report.views).
They apply only to the paper's own data: a run on other classes is not compared with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperFigures:
    """The paper's numbers, as it prints them."""

    test_images: str = "1,184"
    accuracy: str = "0.94"
    roc_auc: str = "0.983"
    # class → (precision, recall, F1), section 7.1
    per_class: tuple[tuple[str, str, str, str], ...] = (
        ("chihuahua", "0.92", "0.97", "0.95"),
        ("muffin", "0.97", "0.90", "0.94"),
    )
    # section 6: chimuf.core.hyperparameters.PAPER_BEST; what the paper calls two of them
    paper_names: tuple[tuple[str, str], ...] = (("dropout_conv", "hidden layer"),
                                                ("dropout_dense", "flatten layer"))

    @property
    def n_test(self) -> int:
        return int(self.test_images.replace(",", ""))

    @property
    def correct(self) -> int:
        """Test images the paper's final model got right: its accuracy times its test images."""
        return round(float(self.accuracy) * self.n_test)


PAPER = PaperFigures()


def same_data(classes: Sequence[str]) -> bool:
    """Whether a run's classes are the paper's (chihuahua and muffin, in any case)."""
    return sorted(c.lower() for c in classes) == ["chihuahua", "muffin"]
