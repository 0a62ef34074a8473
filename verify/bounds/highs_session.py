"""The HiGHS session: silent instances, a solve that holds Ctrl-C, a ReluProgram passed in as a
sparse model, objectives swapped on a warm model, and the tolerance a solver-backed YES must clear.

The LP (`bounds/lp.py`), the MILP (`exact/milp.py`) and input-split BaB's local MILP use these;
the programs themselves come from `relu_encoding.build_program`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import highspy
import numpy as np

from ..errors import InputError
from .relu_encoding import SMALL_COEFFICIENT, ReluProgram

_BANNER_SILENCED = False


def new_highs() -> highspy.Highs:
    """A HiGHS instance that prints nothing. HiGHS 1.16 writes a banner to the process's stdout
    (file descriptor 1, bypassing sys.stdout) when the first instance is made, which would corrupt
    `verify certify --json`; that first construction runs with fd 1 pointed at os.devnull."""
    global _BANNER_SILENCED
    if not _BANNER_SILENCED:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                highs = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER_SILENCED = True
    else:
        highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.cbMipInterrupt.subscribe(_stop_if_interrupted)
    return highs


_sigint_pending = False  # Ctrl-C came while run_highs held it


def interrupt_requested() -> bool:
    """Whether Ctrl-C came during the current HiGHS solve (MIP interrupt callbacks stop on it)."""
    return _sigint_pending


def _stop_if_interrupted(event) -> None:
    if _sigint_pending:
        event.interrupt(True)


def _hold_sigint(signum, frame) -> None:
    global _sigint_pending
    _sigint_pending = True


def run_highs(highs: highspy.Highs) -> None:
    """`highs.run()` with Ctrl-C held while it runs. Python takes a signal only between bytecodes,
    which during a solve means inside a callback: raised there, KeyboardInterrupt was lost in
    HiGHS and the stopped solve looked decided. Here the signal only sets a flag; a MIP stops at
    its next interrupt callback, and once run() returns the signal is handed to the handler that
    was in place (KeyboardInterrupt by default). Off the main thread it is plain run()."""
    global _sigint_pending
    try:
        previous = signal.signal(signal.SIGINT, _hold_sigint)
    except ValueError:  # not the main thread: signals are not ours to take
        highs.run()
        return
    try:
        highs.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        pending, _sigint_pending = _sigint_pending, False
    if pending:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def to_highs(program: ReluProgram, relax: bool = False, options: Optional[dict] = None
             ) -> highspy.Highs:
    """A silent HiGHS instance holding the program (binaries continuous in [0, 1] if `relax`),
    passed as a row-wise sparse matrix; the objective is set later with `set_objective`."""
    if program.ball is not None:
        raise ValueError("an l_2 ball needs a second-order cone: HiGHS cannot hold it")
    highs = new_highs()
    for key, value in (options or {}).items():
        highs.setOptionValue(key, value)
    A = program.matrix.tocsr()
    integrality = (program.integer & (not relax)).astype(np.int32)
    status = highs.passModel(
        program.n_cols, program.n_rows, int(A.nnz), int(highspy.MatrixFormat.kRowwise),
        int(highspy.ObjSense.kMinimize), 0.0, np.zeros(program.n_cols), program.col_lower,
        program.col_upper, program.row_lower, program.row_upper, A.indptr.astype(np.int32),
        A.indices.astype(np.int32), A.data.astype(np.float64), integrality)
    tiny = np.flatnonzero((A.data != 0) & (np.abs(A.data) <= SMALL_COEFFICIENT))
    if tiny.size:  # HiGHS would drop it: the model would not be the network's
        k = tiny[np.argmin(np.abs(A.data[tiny]))]
        row, col = np.searchsorted(A.indptr, k, side="right") - 1, A.indices[k]
        raise InputError(f"a weight of magnitude {abs(A.data[k]):.3g} (row "
                         f"{program.row_names[row]}, column {program.names[col]}) is below "
                         f"{SMALL_COEFFICIENT:g}, which HiGHS drops from a model: lp and milp "
                         "cannot encode this network exactly (crown, alpha-crown and bab can)")
    if status != highspy.HighsStatus.kOk:  # infinite or overflowing bounds and coefficients
        raise InputError("HiGHS refused the model: the input set or the neuron bounds are "
                         "unbounded or too large (give a finite domain and a smaller eps)")
    return highs


def set_objective(highs: highspy.Highs, cost: np.ndarray, offset: float) -> None:
    """Replace the objective, keeping the model and its basis (the next solve is warm)."""
    n = len(cost)
    highs.changeColsCost(n, np.arange(n, dtype=np.int32), np.asarray(cost, dtype=np.float64))
    highs.changeObjectiveOffset(float(offset))


def highs_tolerance(highs: highspy.Highs, integer: bool = False) -> float:
    """The feasibility tolerance a solver-backed YES must clear (the largest that applies)."""
    keys = ["primal_feasibility_tolerance", "dual_feasibility_tolerance"]
    if integer:
        keys.append("mip_feasibility_tolerance")
    return max(float(highs.getOptionValue(k)[1]) for k in keys)
