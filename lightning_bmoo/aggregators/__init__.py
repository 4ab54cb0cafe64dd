"""Gramian-based multi-objective aggregators: ``w = aggregator(G @ G.T)``, update ``w @ G``.

Every method is a small module; all are pure torch, solve in float64 and are deterministic
given the generator passed in.
"""

from ._aligned_mtl import AlignedMTL
from ._base import Aggregator, StatefulAggregator, check_gramian
from ._cagrad import CAGrad
from ._gradvac import GradVac
from ._imtl_g import IMTLG
from ._mean import Mean
from ._mgda import MGDA
from ._nash_mtl import NashMTL
from ._pcgrad import PCGrad
from ._random import RandomWeights
from ._registry import available_aggregators, get_aggregator, register_aggregator
from ._upgrad import UPGrad

for _cls in (
    Mean,
    MGDA,
    PCGrad,
    CAGrad,
    GradVac,
    NashMTL,
    IMTLG,
    AlignedMTL,
    UPGrad,
    RandomWeights,
):
    register_aggregator(_cls)

__all__ = [
    "IMTLG",
    "MGDA",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "GradVac",
    "Mean",
    "NashMTL",
    "PCGrad",
    "RandomWeights",
    "StatefulAggregator",
    "UPGrad",
    "available_aggregators",
    "check_gramian",
    "get_aggregator",
    "register_aggregator",
]
