"""Exact certifiers: they close the gap between the relaxed lower bound and a witness.

milp.py: big-M mixed-integer program on HiGHS; neuron bounds from bounds/; YES or NO (MAYBE only
on timeout or when the solver's numbers cannot be trusted within its tolerance).
"""
