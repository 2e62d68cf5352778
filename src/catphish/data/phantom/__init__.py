"""The phantom consortium: a procedurally generated multi-site glioma MRI cohort on real brain anatomy.

The embedded default data of catphish (DESIGN §3, docs/phantom.md). Modules, in the order a subject is made:
``anatomy`` (MNI152 tissue maps warped per subject), ``tumour`` (class-dependent phenotype and geometry),
``contrast`` (T1/T1C/T2/FLAIR from tissue fractions), ``scanner`` (per-site acquisition), ``cohort`` (the eight sites,
labels and seeds, one subject end to end) and ``build`` (parallel writing in BraTS 2021 naming with ``labels.csv``).
"""

from catphish.data.phantom.build import BuildSummary, build_consortium
from catphish.data.phantom.cohort import (
    CONSORTIUM,
    SITE_NAMES,
    PhantomSubject,
    SubjectPlan,
    generate_subject,
    plan_cohort,
    resolve_sites,
    site_counts,
)

__all__ = [
    "CONSORTIUM",
    "SITE_NAMES",
    "BuildSummary",
    "PhantomSubject",
    "SubjectPlan",
    "build_consortium",
    "generate_subject",
    "plan_cohort",
    "resolve_sites",
    "site_counts",
]
