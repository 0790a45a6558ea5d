"""Certified lower bounds on the robust error: a global Lipschitz bound, interval bound propagation and
CROWN-style linear bounds, and the certified radii they give (``radius.certified_radii``)."""
