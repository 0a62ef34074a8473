"""Exact certifiers: they close the gap between the relaxed lower bound and a witness.

milp.py: big-M mixed-integer program on HiGHS; neuron bounds from bounds/; YES or NO (MAYBE only
on timeout or when the solver's numbers cannot be trusted within its tolerance).
bab.py: branch and bound over input boxes (complete for few inputs).
relu_bab.py: branch and bound over ReLU splits with beta-CROWN bounds (complete for many inputs).
"""
