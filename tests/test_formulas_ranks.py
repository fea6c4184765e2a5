"""Average ranks (the ranks behind every Spearman correlation) against scipy.stats.rankdata."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from whycam.metrics.ranks import average_ranks


def test_average_ranks_equal_scipy_rankdata_with_ties():
    values = torch.randint(0, 7, (4, 40), generator=torch.Generator().manual_seed(0)).double()
    np.testing.assert_array_equal(average_ranks(values).numpy(), rankdata(values.numpy(), method="average", axis=1))
