"""ReLU-split branch and bound with beta-CROWN bounds: complete for networks with many inputs.

Accepts:   Network of Dense/Conv2d/ReLU layers, or a GraphNetwork (verify.graph: bounds by
           verify.bounds.graph, leaf LPs by verify.graph.encoding); input set = l_inf/l_2/l_1
           ball ∩ box, or a box;
           any output rows C f(x) - d (robustness margins or VNN-LIB disjuncts, one row each).
Returns:   Certificate: YES (every row's minimum > 0, proved on every leaf of the split tree), NO
           (a counterexample replayed by the float64 forward pass) or MAYBE (timeout / domain
           budget / an inconclusive leaf), with margin_lower = the least bound over the leaves.
Method:    PGD attack first (verify.attack). Then a search over ReLU splits: a domain is one margin
           row plus, per ReLU, a phase in {inactive z <= 0, unsplit, active z >= 0}. Each round
           bounds up to `batch_size` domains (lowest bound first) in one batched CROWN pass stack
           (verify.bounds.crown.backward_lower with split terms): neuron bounds are the root's
           CROWN bounds clamped by the splits and re-tightened by intervals (on a graph only
           downstream of a split; `refine_intermediate`: also per-domain CROWN bounds of the
           Relu inputs downstream of its splits, `GraphBounds.refine`, off by default: on
           resnet_4b it costs ~40x the domains and lifts no bound at equal domains; with
           minutes to search, the root's last Relu inputs are first tightened by alpha-CROWN,
           `GraphBounds.tighten_root`, which every domain inherits); every split
           constraint s z >= 0 enters as a Lagrangian term - beta s z (beta >= 0) and the lower
           ReLU slopes alpha in [0, 1] are optimised with beta by projected Adam (beta-CROWN;
           `root_steps` at the root, then `steps` per round, `graph_steps` on a graph).
           Proved domains (bound > 0) and empty ones (some l > u) are dropped; the rest split on
           the unsplit unstable neuron of highest BaBSR score, children inheriting alpha and beta.
           A domain with no unstable neuron left is a leaf, linear on every ReLU: its LP (HiGHS,
           the triangle encoding with the leaf's clamped bounds, bounds from the duals by
           `lagrangian_bound`) proves it or yields a point that is replayed. On a graph the
           leaf LP is exact unless it relaxes a node (`leaf_relaxation`: a MaxPool output with
           several live candidates, smooth ops, Softmax, ...); such a leaf it cannot prove
           stays open with that reason.
Soundness: sound (every bound is valid on its domain with crown.py's rounding allowances; the
           domains cover the input set); complete when every ReLU reads an affine node's
           output (chains: the first layer is affine) and, on a graph, no node is relaxed:
           depth is bounded by the number of unstable neurons and every leaf is decided by an
           exact LP.
Reference: Wang et al., "Beta-CROWN: Efficient Bound Propagation with Per-neuron Split Constraints
           for Neural Network Robustness Verification", NeurIPS 2021; Bunel et al., "Branch and
           Bound for Piecewise Linear Neural Network Verification", JMLR 2020 (BaBSR).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from .. import deadline as deadlines
from ..certificate import Certificate
from ..errors import InputError
from ..graph.encoding import relaxed_reason
from ..network import AFFINE, Network, ReLU, resolve_device
from ..spec import Specification
from ..verdict import certificate_from_bounds, validated_counterexample

Tensor = torch.Tensor


REFINE_ROWS = 4096  # GraphBounds.refine: at most this many (domain, entry) rows per pass
# GraphBounds.tighten_root runs when the search has at least this many seconds (a finite
# deadline), within this share of them: on resnet_4b prop_0 its ~29 s (the last 2 Relu inputs,
# 10 steps) lift the least bound at 300 s from -0.090 to -0.070, and leave it at 60 s as it was
ROOT_INTERMEDIATE_MIN_S = 120.0
ROOT_INTERMEDIATE_SHARE = 0.15


@dataclass
class ReluBaBOptions:
    LIMITS: ClassVar[dict[str, str]] = {  # checked by make_options
        "timeout": ">= 0", "batch_size": ">= 1", "steps": ">= 0", "graph_steps": ">= 0",
        "root_steps": ">= 0", "root_intermediate": ">= 0", "root_intermediate_steps": ">= 0",
        "lr_alpha": "> 0", "lr_beta": "> 0", "max_domains": ">= 1", "leaf_lps": ">= 0"}
    device: str = "auto"
    timeout: float = 60.0  # seconds per specification (0: none; the active deadline still holds)
    batch_size: int = 256  # domains bounded per batched pass
    steps: int = 10  # projected Adam steps on alpha and beta per round
    # the same on a GraphNetwork: on cifar10_resnet's resnet_4b prop_0 the least bound at 60 s
    # is -0.11 with 2, -0.16 with 0 (no beta: more, looser domains), -0.20 with 4; a
    # one-Relu-layer MaxPool CNN that 2 proves in 1.3 s stays open at 30 s with 0
    graph_steps: int = 2
    root_steps: int = 30  # the same at the root (alpha-CROWN on each row)
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    max_domains: int = 1_000_000  # domains bounded in all before giving up
    leaf_lps: int = 100_000  # exact LPs on fully split leaves before giving up
    attack: bool = True  # PGD before the search
    # on a GraphNetwork, per domain CROWN bounds of the Relu inputs downstream of its splits
    # (`GraphBounds.refine`); off: those are the root's, clamped and re-tightened by intervals
    refine_intermediate: bool = False
    # on a GraphNetwork with >= ROOT_INTERMEDIATE_MIN_S s to search: the root's bounds of the
    # last `root_intermediate` Relu inputs optimised first (`GraphBounds.tighten_root`)
    root_intermediate: int = 2
    root_intermediate_steps: int = 10


@dataclass
class Domains:
    """A stack of D domains: a margin row each, phases per ReLU layer, warm-start alpha/beta."""

    rows: Tensor  # (D,) row index into C
    splits: dict[int, Tensor]  # k -> (D, n) int8 in {-1, 0, +1}, ReLU layer k's input z
    # ReLU k's lower slopes and >= 0 multipliers of the split constraints, (D, 1, n_k) over the
    # n_k entries of k unstable at the root (`ReluSearch.unstable`): only those are ever relaxed
    # or split (a domain's bounds lie within the root's), so the stack stores nothing else
    alphas: dict[int, Tensor]
    betas: dict[int, Tensor]
    lower: Tensor  # (D,) best bound so far (the parent's for new children)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: Tensor) -> "Domains":
        return Domains(self.rows[index], {k: v[index] for k, v in self.splits.items()},
                       {k: v[index] for k, v in self.alphas.items()},
                       {k: v[index] for k, v in self.betas.items()}, self.lower[index])

    @staticmethod
    def cat(parts: Sequence["Domains"]) -> "Domains":
        first = parts[0]
        return Domains(torch.cat([p.rows for p in parts]),
                       {k: torch.cat([p.splits[k] for p in parts]) for k in first.splits},
                       {k: torch.cat([p.alphas[k] for p in parts]) for k in first.alphas},
                       {k: torch.cat([p.betas[k] for p in parts]) for k in first.betas},
                       torch.cat([p.lower for p in parts]))


@dataclass
class SearchResult:
    status: str  # "unsat" (every row proved), "sat", "unknown"
    row_lower: np.ndarray  # per row: least bound over its leaves (sound)
    counterexample: Optional[np.ndarray] = None
    reason: str = ""
    domains: int = 0
    leaf_lps: int = 0
    rounds: int = 0
    stats: dict = field(default_factory=dict)


def splittable_layers(net: Network) -> list[int]:
    """ReLU layers whose input is an affine layer's output (the ones split on)."""
    return [k for k, layer in enumerate(net.layers)
            if isinstance(layer, ReLU) and k > 0 and isinstance(net.layers[k - 1], AFFINE)]


def domain_bounds(net: Network, root: list, splits: dict[int, Tensor], params: list,
                  count: int) -> tuple[list, Tensor]:
    """Neuron bounds of each domain: the root's, the split neurons' clamped (active: l >= 0,
    inactive: u <= 0), later layers re-tightened by interval steps. Also (D,) bool: empty
    domains (some l > u: the splits contradict sound bounds, no input lies there). `count`:
    the number of domains D (also when nothing is split)."""
    from ..bounds import ibp

    bounds = []
    empty = None
    for k, layer in enumerate(net.layers):
        lower, upper = (t.expand(count, -1) for t in root[k])
        if k > 0:
            prev_lower, prev_upper = bounds[k - 1]
            step_lower, step_upper = ibp.layer_interval(layer, params[k], prev_lower, prev_upper)
            lower, upper = torch.maximum(lower, step_lower), torch.minimum(upper, step_upper)
        if k + 1 in splits:  # layer k's output is the input z of split ReLU layer k + 1
            phase = splits[k + 1]
            lower = torch.where(phase > 0, lower.clamp(min=0), lower)
            upper = torch.where(phase < 0, upper.clamp(max=0), upper)
        bad = (lower > upper).any(dim=1)
        empty = bad if empty is None else empty | bad
        bounds.append((lower, upper))
    return bounds, empty


def graph_domain_bounds(net, root: dict, splits: dict[str, Tensor], input_of: dict[str, str],
                        count: int) -> tuple[dict, Tensor]:
    """`domain_bounds` for a GraphNetwork: every tensor's bounds (D, *shape) are the root's, the
    split Relu inputs clamped, the tensors downstream of a clamped one re-tightened by the
    nodes' interval rules in topological order (the others keep the root's: their inputs' are
    the root's, which those rules produced); and the (D,) empty mask."""
    from ..bounds import graph

    clamp_at: dict[str, list[str]] = {}
    for key, z in input_of.items():
        if bool((splits[key] != 0).any()):  # (a key split in no domain clamps nothing)
            clamp_at.setdefault(z, []).append(key)
    bounds = {name: (lo.expand(count, *lo.shape[1:]), up.expand(count, *up.shape[1:]))
              for name, (lo, up) in root.items() if name in net.graph.inputs}
    empty = torch.zeros(count, dtype=torch.bool, device=next(iter(root.values()))[0].device)
    moved: set[str] = set()  # tensors whose bounds differ from the root's in some domain
    for k, node in enumerate(net.graph.nodes):
        lower, upper = root[node.output]
        if node.output not in clamp_at and not moved.intersection(node.inputs):
            empty = empty | (lower > upper).flatten(1).any(dim=1)
            bounds[node.output] = (lower.expand(count, *lower.shape[1:]),
                                   upper.expand(count, *upper.shape[1:]))
            continue
        moved.add(node.output)
        lower, upper = lower.expand(count, *lower.shape[1:]), upper.expand(count, *upper.shape[1:])
        if moved.intersection(node.inputs):
            step_lower, step_upper = graph.node_interval(net, k, node,
                                                         [bounds[i] for i in node.inputs])
            lower, upper = torch.maximum(lower, step_lower), torch.minimum(upper, step_upper)
        for key in clamp_at.get(node.output, []):
            phase = splits[key].reshape(lower.shape)
            lower = torch.where(phase > 0, lower.clamp(min=0), lower)
            upper = torch.where(phase < 0, upper.clamp(max=0), upper)
        empty = empty | (lower > upper).flatten(1).any(dim=1)
        bounds[node.output] = (lower, upper)
    return bounds, empty


def leaf_relaxation(program) -> str:
    """'' when a fully split leaf's triangle LP `program` is exact, else what it relaxes: the
    graph encoding's relaxed ops (`relaxed_reason`), MaxPool outputs with two live candidates
    or more (their LP hull), Relus still unstable (on a network input: never split)."""
    columns = program.graph
    parts = [relaxed_reason(columns)] if columns is not None and columns.relaxed else []
    if columns is not None and columns.split_pools:
        parts.append(f"{columns.split_pools} MaxPool output(s) with several live candidates")
    if program.unstable_neurons:
        parts.append(f"{program.unstable_neurons} unsplit unstable Relu(s)")
    return "; ".join(parts)


class ChainBounds:
    """The search's bound functions on a chain Network (verify.bounds.crown), keyed by ReLU
    layer index: the root's CROWN neuron bounds, domain bounds, beta-CROWN margin bounds."""

    def __init__(self, net: Network, base, device: torch.device):
        from ..bounds import crown, ibp

        self.net, self.params = net, net.torch_params(device)
        with torch.no_grad():
            self.root, _ = crown.propagate(net, base, ibp.layer_bounds(net, base),
                                           include_last=False)
        self.keys = splittable_layers(net)

    def relu_inputs(self, bounds: list) -> dict[int, tuple[Tensor, Tensor]]:
        """(D, n) bounds of each split key's ReLU input."""
        return {k: bounds[k - 1] for k in self.keys}

    def domain_bounds(self, splits: dict, count: int) -> tuple[list, Tensor]:
        return domain_bounds(self.net, self.root, splits, self.params, count)

    def leaf_bounds(self, bounds: list, index: int) -> list:
        """Domain `index`'s neuron bounds as `build_program` takes them (float64 numpy)."""
        return [(lo[index].cpu().numpy(), up[index].cpu().numpy()) for lo, up in bounds]

    def margin_lower(self, batch, bounds, alphas, terms, record, reuse=None) -> Tensor:
        from ..bounds import crown

        return crown.margin_lower_from(self.net, batch, bounds, alphas, terms, record)


class GraphBounds(ChainBounds):
    """The same on a GraphNetwork (verify.bounds.graph), keyed by Relu node output; a Relu is
    split on when its input is a node's output."""

    def __init__(self, net, base, device: torch.device):
        from ..bounds import graph
        from ..bounds.alpha_crown import remembered_bounds

        self.net = net
        with torch.no_grad():
            self.root = graph.crown_bounds(net, base)
        tighter = remembered_bounds(net, base)  # alpha-CROWN's optimised ones, when it ran
        if tighter is not None:  # on this input set just before (auto): both sound, intersect
            self.root = {name: (torch.maximum(lo, tighter[name][0]),
                                torch.minimum(up, tighter[name][1]))
                         for name, (lo, up) in self.root.items()}
        self._settle_root()
        produced = {node.output for node in net.graph.nodes}
        self.input_of = {node.output: node.inputs[0] for node in net.graph.nodes
                         if node.op == "Relu" and node.inputs[0] in produced}
        self.keys = list(self.input_of)
        # `refine`'s targets: the split Relus' inputs, each with the keys whose clamped input
        # it depends on
        producer = {node.output: node for node in net.graph.nodes}
        self.targets = list(dict.fromkeys(self.input_of.values()))
        self.upstream = {}
        for z in self.targets:
            seen, stack = set(), list(producer[z].inputs)
            while stack:
                t = stack.pop()
                if t not in seen:
                    seen.add(t)
                    stack.extend(producer[t].inputs if t in producer else ())
            self.upstream[z] = {k for k, clamped in self.input_of.items() if clamped in seen}

    def relu_inputs(self, bounds: dict) -> dict[str, tuple[Tensor, Tensor]]:
        return {k: (bounds[z][0].flatten(1), bounds[z][1].flatten(1))
                for k, z in self.input_of.items()}

    def domain_bounds(self, splits: dict, count: int) -> tuple[dict, Tensor]:
        return graph_domain_bounds(self.net, self.root, splits, self.input_of, count)

    def _settle_root(self) -> None:
        """One interval pass over the root, each tensor intersected with its nodes' rule
        (graph_domain_bounds re-runs the rules downstream of splits only)."""
        from ..bounds import graph

        with torch.no_grad():
            for k, node in enumerate(self.net.graph.nodes):
                lo, up = self.root[node.output]
                step = graph.node_interval(self.net, k, node,
                                           [self.root[i] for i in node.inputs])
                self.root[node.output] = (torch.maximum(lo, step[0]), torch.minimum(up, step[1]))

    def tighten_root(self, base, count: int, steps: int) -> None:
        """alpha-CROWN on the root's bounds of the last `count` Relu inputs (topological order,
        `alpha_crown.graph_optimized_intermediate`, `steps` each; never looser, stops at the
        active deadline with what it has), then the interval pass downstream."""
        from ..bounds.alpha_crown import graph_optimized_intermediate, graph_relu_inputs

        targets = graph_relu_inputs(self.net)[-count:]
        if targets:
            self.root, _ = graph_optimized_intermediate(self.net, base, self.root, targets, steps)
            self.root = {name: (lo.detach(), up.detach()) for name, (lo, up) in self.root.items()}
            self._settle_root()

    def refine(self, batch, bounds: dict, splits: dict, empty: Tensor, deadline,
               budget: int = REFINE_ROWS) -> tuple[dict, Tensor]:
        """Per domain, CROWN bounds of the Relu inputs downstream of the domain's splits
        (beta-CROWN recomputes them on every domain): for each such z in topological order, the
        entries unstable in some domain of the batch (l < 0 < u) are bounded by backward passes
        from +-e_i over that domain's bounds (the split Relus' clamped ones: their relaxation is
        exact there), at most `budget` (domain, entry) rows per pass; each is intersected with
        the given bound, so never looser, and the tensors downstream are re-tightened by their
        interval rules. No split term enters these passes (beta = 0: sound on the domain). Stops
        at `deadline` with what it has (sound). Returns the bounds and the (D,) empty mask."""
        from ..bounds import InputBatch, graph

        split_keys = {k for k, s in splits.items() if bool((s != 0).any())}
        if not split_keys:
            return bounds, empty
        bounds, nodes = dict(bounds), self.net.graph.nodes
        position = {node.output: i for i, node in enumerate(nodes)}
        for z in self.targets:
            upstream = self.upstream[z] & split_keys
            if not upstream or deadline.expired():
                continue
            mine = torch.zeros(len(empty), dtype=torch.bool, device=empty.device)
            for k in upstream:
                mine |= (splits[k] != 0).any(1)
            domains = torch.nonzero(mine & ~empty).squeeze(1)
            lo, up = bounds[z]
            flat_lo, flat_up = lo.flatten(1)[domains], up.flatten(1)[domains]
            rows = torch.nonzero(((flat_lo < 0) & (flat_up > 0)).any(0)).squeeze(1)
            if len(domains) == 0 or len(rows) == 0:
                continue
            sub = {name: (l[domains], u[domains]) for name, (l, u) in bounds.items()}
            sub_batch = InputBatch(lower=batch.lower[domains], upper=batch.upper[domains],
                                   center=batch.center[domains], eps=batch.eps[domains],
                                   norm=batch.norm, C=batch.C[domains], d=batch.d[domains])
            new_lo, new_up, _ = graph.entry_bounds(self.net, sub_batch, sub, z, rows,
                                                   max(1, budget // (2 * len(domains))), deadline)
            full_lo, full_up = lo.flatten(1).clone(), up.flatten(1).clone()
            full_lo[domains], full_up[domains] = new_lo, new_up
            bounds[z] = (full_lo.reshape(lo.shape), full_up.reshape(up.shape))
            empty = empty | (full_lo > full_up).any(1)
            moved = {z}  # the interval rules downstream of z, on every domain of the batch
            for i in range(position[z] + 1, len(nodes)):
                node = nodes[i]
                if not moved.intersection(node.inputs):
                    continue
                moved.add(node.output)
                old_lo, old_up = bounds[node.output]
                step = graph.node_interval(self.net, i, node, [bounds[t] for t in node.inputs])
                new = (torch.maximum(old_lo, step[0]), torch.minimum(old_up, step[1]))
                bounds[node.output] = new
                empty = empty | (new[0] > new[1]).flatten(1).any(1)
        return bounds, empty

    def leaf_bounds(self, bounds: dict, index: int) -> dict:
        """Per tensor name, its flat bounds in domain `index` (as `build_program` takes them)."""
        return {name: (lo[index].reshape(-1).cpu().numpy(), up[index].reshape(-1).cpu().numpy())
                for name, (lo, up) in bounds.items()}

    def margin_lower(self, batch, bounds, alphas, terms, record, reuse=None) -> Tensor:
        """(`reuse`: graph.backward_bound's, one dict per round of passes over `bounds`)"""
        from ..bounds import graph

        return graph.margin_lower_from(self.net, batch, bounds, alphas, terms, record, reuse)


def babsr_scores(inputs: dict, record: dict, splits: dict
                 ) -> tuple[Tensor, list[tuple[int, int]]]:
    """BaBSR-style scores (D, total neurons) over the splittable ReLUs, -inf where a neuron is
    split or stable; `inputs[k]`: (D, n) bounds of ReLU k's input. lam = the bound's
    coefficient on the ReLU output; an unstable neuron with
    lam < 0 is charged its upper chord's intercept, -lam u (-l) / (u - l): the estimated gain of
    removing it by a split (Bunel et al. 2020). Ties: |lam| min(u, -l) (the lower line's gap)."""
    parts, spans, start = [], [], 0
    for k, phase in splits.items():
        lower, upper = inputs[k]
        # a Relu the backward pass does not reach (behind an interval-only node) has lam = 0
        lam = record[k][:, 0, :] if k in record else torch.zeros_like(lower)
        open_ = (lower < 0) & (upper > 0) & (phase == 0)
        neg_l, u = (-lower).clamp(min=0), upper.clamp(min=0)
        intercept = neg_l * u / (neg_l + u).clamp(min=1e-300)
        score = (-lam).clamp(min=0) * intercept + 1e-3 * lam.abs() * torch.minimum(u, neg_l) \
            + 1e-12 * torch.minimum(u, neg_l)
        parts.append(torch.where(open_, score, torch.full_like(score, -math.inf)))
        spans.append((k, start))
        start += score.shape[1]
    if not parts:  # nothing to split on: every domain is a leaf
        return torch.full((len(record[-1]), 1), -math.inf, dtype=torch.float64,
                          device=record[-1].device), spans
    return torch.cat(parts, dim=1), spans


class ReluSearch:
    """Branch and bound over ReLU phases for the rows of one specification."""

    def __init__(self, net: Network, spec: Specification, options: ReluBaBOptions,
                 deadline: deadlines.Deadline):
        from ..bounds import InputBatch, crown

        self.net, self.spec, self.options, self.deadline = net, spec, options, deadline
        self.device = resolve_device(options.device)
        self.base = InputBatch.from_specs([spec], self.device)
        kind = GraphBounds if getattr(net, "is_graph", False) else ChainBounds
        self.problem = kind(net, self.base, self.device)
        if kind is GraphBounds and options.root_intermediate > 0 and \
                ROOT_INTERMEDIATE_MIN_S <= deadline.remaining() < math.inf:
            with deadlines.limit(deadline.split(ROOT_INTERMEDIATE_SHARE)):
                self.problem.tighten_root(self.base, options.root_intermediate,
                                          options.root_intermediate_steps)
        self.root, self.relus = self.problem.root, self.problem.keys
        self.params = getattr(self.problem, "params", None)
        m = spec.output.C.shape[0]
        inputs = self.problem.relu_inputs(self.root)
        self.row_lower = np.full(m, np.inf)  # least proved bound per row
        self.leaf_open: list[str] = []
        self.result = SearchResult("unknown", self.row_lower)
        self.widths = {k: inputs[k][0].shape[1] for k in self.relus}
        splits = {k: torch.zeros((m, inputs[k][0].shape[1]), dtype=torch.int8,
                                 device=self.device) for k in self.relus}
        alphas = {}
        self.unstable = {}  # k -> indices of ReLU k's entries unstable at the root
        for k in self.relus:
            relax = crown.relu_relaxation(*inputs[k])
            self.unstable[k] = torch.nonzero(relax.unstable.any(0)).flatten()
            alphas[k] = relax.lower_slope[:, None, :].expand(m, -1, -1).clone()
        if isinstance(self.problem, GraphBounds):  # alpha-CROWN's best slopes per row (auto)
            from ..bounds.alpha_crown import remembered_slopes

            remembered = remembered_slopes(net, self.base, spec.output.C, spec.output.d)
            for i, found in enumerate(remembered):
                for k in self.relus if found is not None else ():
                    if k in found and found[k].numel() == alphas[k].shape[2]:
                        alphas[k][i, 0] = found[k].to(alphas[k])
        alphas = {k: a[:, :, self.unstable[k]] for k, a in alphas.items()}
        self.domains = Domains(torch.arange(m, device=self.device), splits, alphas,
                               {k: torch.zeros_like(a) for k, a in alphas.items()},
                               torch.full((m,), -math.inf, dtype=torch.float64,
                                          device=self.device))
        self.first = True

    def _batch(self, rows: Tensor):
        from ..bounds import InputBatch

        base, count = self.base, len(rows)
        C = torch.as_tensor(self.spec.output.C, dtype=torch.float64, device=self.device)
        d = torch.as_tensor(self.spec.output.d, dtype=torch.float64, device=self.device)
        return InputBatch(lower=base.lower.expand(count, -1), upper=base.upper.expand(count, -1),
                          center=base.center.expand(count, -1), eps=base.eps.expand(count),
                          norm=base.norm, C=C[rows][:, None, :], d=d[rows][:, None])

    def _full(self, k, compact: Tensor) -> Tensor:
        """(D, 1, n) over all of ReLU k's entries from the stack's (D, 1, n_k) (0 elsewhere:
        a stable entry's slope and multiplier are never read)."""
        full = torch.zeros((*compact.shape[:2], self.widths[k]), dtype=compact.dtype,
                           device=compact.device)
        full[:, :, self.unstable[k]] = compact
        return full

    def bound(self, chosen: Domains, steps: int) -> tuple[Tensor, list, Tensor, dict]:
        """beta-CROWN lower bounds (D,) of the chosen domains, their neuron bounds, the empty
        mask, and the coefficients on each ReLU's output (for branching). alpha and beta are
        optimised in place by `steps` of projected Adam; every iterate is sound, the best kept."""
        from ..bounds.alpha_crown import ProjectedAdam

        batch = self._batch(chosen.rows)
        with torch.no_grad():
            bounds, empty = self.problem.domain_bounds(chosen.splits, len(chosen))
            if self.options.refine_intermediate and isinstance(self.problem, GraphBounds):
                bounds, empty = self.problem.refine(batch, bounds, chosen.splits, empty,
                                                    self.deadline)
        signs = {k: s.to(torch.float64)[:, None, :] for k, s in chosen.splits.items()}
        alphas = {k: self._full(k, a).requires_grad_(True) for k, a in chosen.alphas.items()}
        betas = {k: self._full(k, b).requires_grad_(True) for k, b in chosen.betas.items()}
        best = torch.full((len(chosen),), -math.inf, dtype=torch.float64, device=self.device)
        record: dict[int, Tensor] = {}
        best_alphas = {k: a.detach().clone() for k, a in alphas.items()}
        best_betas = {k: b.detach().clone() for k, b in betas.items()}
        optimizers = (ProjectedAdam(list(alphas.values()), self.options.lr_alpha),
                      ProjectedAdam(list(betas.values()), self.options.lr_beta))
        reuse: dict = {}  # the bounds are fixed for this round's passes
        for step in range(steps + 1):
            expired = self.deadline.expired()
            if expired and step > 0:  # the best iterate stands (sound); no coefficients are
                break  # recorded, and `run` branches no further past the deadline
            last = step == steps or expired
            with torch.enable_grad() if not last else torch.no_grad():
                terms = {k: betas[k] * signs[k] for k in betas}
                value = self.problem.margin_lower(batch, bounds, alphas, terms,
                                                  record if last else None, reuse)[:, 0]
            with torch.no_grad():
                better = value.detach() > best
                best = torch.where(better, value.detach(), best)
                for k in alphas:
                    best_alphas[k][better] = alphas[k].detach()[better]
                    best_betas[k][better] = betas[k].detach()[better]
            if last:
                break
            if bool((best > 0).all()):  # all proved: no branching needs the coefficients
                break
            if not value.requires_grad:  # no slope or split term reaches the margin (no Relu,
                with torch.no_grad():  # or only behind a Product's interval): nothing to
                    self.problem.margin_lower(batch, bounds, alphas, terms, record, reuse)
                break
            for optimizer in optimizers:
                optimizer.zero_grad()
            (-value[~(best > 0)].sum()).backward()
            for optimizer in optimizers:
                optimizer.step()
            with torch.no_grad():  # projection: keeps every iterate sound
                for a in alphas.values():
                    a.clamp_(0.0, 1.0)
                for b in betas.values():
                    b.clamp_(min=0.0)
        chosen.alphas = {k: a[:, :, self.unstable[k]] for k, a in best_alphas.items()}
        chosen.betas = {k: b[:, :, self.unstable[k]] for k, b in best_betas.items()}
        return torch.maximum(best, chosen.lower), bounds, empty, record

    def leaf_lp(self, row: int, bounds, index: int
                ) -> tuple[float, Optional[np.ndarray], str]:
        """LP of one fully split leaf (triangle encoding, exact for its stable ReLUs): a sound
        bound from its duals, its optimal input, and what it relaxes ('' when it is exact:
        `leaf_relaxation`). An infeasible leaf is bounded through HiGHS's dual ray (any
        multipliers give a bound)."""
        from ..bounds.lp import RowSolver
        from ..bounds.relu_encoding import TRIANGLE, build_program, lagrangian_bound

        program = build_program(self.net, self.spec.input_set,
                                self.problem.leaf_bounds(bounds, index), TRIANGLE)
        solver = RowSolver(program)
        c, d = self.spec.output.C[row], float(self.spec.output.d[row])
        found = solver.minimize(c, d)
        lower = found.lower
        if lower <= 0 and program.ball is None and "nfeasible" in found.status:
            _, has_ray, ray = solver.highs.getDualRay()
            if has_ray:
                cost, offset, cost_error = program.objective(np.asarray(c, dtype=np.float64), d)
                for scale in (1e3, 1e6, 1e9):
                    lower = max(lower, lagrangian_bound(program, cost, offset, cost_error,
                                                        -scale * np.asarray(ray)))
                    lower = max(lower, lagrangian_bound(program, cost, offset, cost_error,
                                                        scale * np.asarray(ray)))
        return lower, found.x, leaf_relaxation(program)

    def run(self) -> SearchResult:
        result, options = self.result, self.options
        t0 = time.perf_counter()
        # Seconds per domain of the last round: a round is cut to what fits in half the time
        # left, so one round cannot run far past the deadline (as bab.BoxSearch does).
        per_domain, last_take, first_round = None, 0, True
        while len(self.domains):
            if self.deadline.expired():
                result.reason = "timeout"
                break
            if result.domains >= options.max_domains:
                result.reason = f"domain budget of {options.max_domains} spent"
                break
            take = min(options.batch_size, len(self.domains))
            left = self.deadline.remaining()
            if per_domain and math.isfinite(left):  # a round must fit in half the time left
                take = max(1, min(take, 2 * last_take, int(0.5 * left / per_domain)))
            last_take, round_start = take, time.perf_counter()
            order = torch.argsort(self.domains.lower)
            chosen, self.domains = self.domains.take(order[:take]), self.domains.take(order[take:])
            steps = options.root_steps if self.first else \
                options.graph_steps if isinstance(self.problem, GraphBounds) else options.steps
            self.first = False
            lower, bounds, empty, record = self.bound(chosen, steps)
            if not first_round:  # (the root's extra steps say nothing of a round's cost)
                per_domain = (time.perf_counter() - round_start) / take
            first_round = False
            result.domains += take
            result.rounds += 1
            proved = empty | (lower > 0)
            rows = chosen.rows.cpu().numpy()
            for i in np.flatnonzero(proved.cpu().numpy()):
                self.row_lower[rows[i]] = min(self.row_lower[rows[i]],
                                              np.inf if bool(empty[i]) else float(lower[i]))
            open_ = ~proved
            if not bool(open_.any()):
                continue
            index = torch.nonzero(open_).squeeze(1)
            chosen = chosen.take(index)
            chosen.lower = lower[index]
            if self.deadline.expired():  # no branching past it: they stay open, bounded
                self.domains = Domains.cat([self.domains, chosen]) if len(self.domains) \
                    else chosen
                result.reason = "timeout"
                break
            bounds = [(lo[index], up[index]) for lo, up in bounds] if isinstance(bounds, list) \
                else {name: (lo[index], up[index]) for name, (lo, up) in bounds.items()}
            record = {k: v[index] for k, v in record.items()}
            rounds = result.rounds  # rounds 1, 2, 4, 8, ...: a bounded share of the time
            found = self._attack_corners(chosen, record[-1]) if rounds & (rounds - 1) == 0 \
                and self.base.norm in ("inf", "box") else None
            if found is not None:
                result.status, result.counterexample = "sat", found
                result.reason = "PGD from a domain's bound minimiser"
                return result
            scores, spans = babsr_scores(self.problem.relu_inputs(bounds), record, chosen.splits)
            best_score, best_at = scores.max(dim=1)
            leaf = torch.isinf(best_score)  # nothing left to split: the domain is linear
            if bool(leaf.any()):
                outcome = self._solve_leaves(chosen, bounds, torch.nonzero(leaf).squeeze(1))
                if outcome is not None:
                    return outcome
            inner = torch.nonzero(~leaf).squeeze(1)
            if len(inner):
                self._push_children(chosen.take(inner), best_at[inner], spans)
        else:
            if not self.leaf_open:
                result.status = "unsat"
        if self.leaf_open and not result.reason:
            result.reason = self.leaf_open[0]
        if result.status != "unsat" and len(self.domains):  # open domains' bounds count too
            lower = self.domains.lower.cpu().numpy()
            for r, value in zip(self.domains.rows.cpu().numpy(), lower):
                self.row_lower[r] = min(self.row_lower[r], value)
        result.stats["time_s"] = time.perf_counter() - t0
        return result

    def _attack_corners(self, chosen: Domains, input_coeffs: Tensor, count: int = 32,
                        steps: int = 10) -> Optional[np.ndarray]:
        """Short PGD (`bab.falsify`) on each row from the input box's corner that minimises the
        linear lower bound of the `count` weakest domains (where the relaxation says a violation
        is likeliest); a point that violates a row in the float64 replay, or None."""
        from .bab import falsify

        lo, up = self.base.lower, self.base.upper
        weakest = torch.argsort(chosen.lower)[:count]
        corners = torch.where(input_coeffs[weakest, 0, :] > 0, lo, up)
        rows = chosen.rows[weakest]
        C = torch.as_tensor(self.spec.output.C, dtype=torch.float64, device=self.device)
        d = torch.as_tensor(self.spec.output.d, dtype=torch.float64, device=self.device)
        for r in torch.unique(rows).tolist():
            starts = corners[rows == r]
            x, value = falsify(self.net, lo.expand_as(starts), up.expand_as(starts),
                               C[r:r + 1], d[r:r + 1], starts, steps=steps)
            found = validated_counterexample(self.net, self.spec, x.cpu().numpy()) \
                if value <= 0 else None
            if found is not None:
                return found[0]  # projected into the set, as replayed
        return None

    def _solve_leaves(self, chosen: Domains, bounds: list, leaves: Tensor
                      ) -> Optional[SearchResult]:
        """Exact LPs on the leaves; a SearchResult when one yields a replayed counterexample."""
        result = self.result
        for i in leaves.tolist():
            row = int(chosen.rows[i])
            if self.deadline.expired():
                skipped = "timeout"
            elif result.leaf_lps >= self.options.leaf_lps:
                skipped = f"leaf LP budget of {self.options.leaf_lps} spent"
            else:
                try:
                    lower, x, relaxed = self.leaf_lp(row, bounds, i)
                    skipped = ""
                except InputError as error:  # (a weight or bound HiGHS cannot hold)
                    skipped = f"a fully split leaf's LP cannot be built: {error}"
            if skipped:
                self.leaf_open.append(skipped)
                self.row_lower[row] = min(self.row_lower[row], float(chosen.lower[i]))
                continue
            result.leaf_lps += 1
            if lower > 0:
                self.row_lower[row] = min(self.row_lower[row], lower)
                continue
            self.row_lower[row] = min(self.row_lower[row], max(lower, float(chosen.lower[i])))
            found = None if x is None else validated_counterexample(self.net, self.spec, x)
            if found is not None:  # (the LP's point projected into the input set)
                result.status, result.counterexample = "sat", found[0]
                result.reason = "exact LP of a fully split leaf"
                return result
            self.leaf_open.append(f"a fully split leaf's LP is not exact ({relaxed}; bound "
                                  f"{lower:.3g})" if relaxed else
                                  f"a fully split leaf's LP is inconclusive (bound {lower:.3g})")
        return None

    def _push_children(self, parents: Domains, at: Tensor, spans: list) -> None:
        """Two children per parent, split on the neuron `at` (a flat index over `spans`)."""
        children = []
        for phase in (1, -1):
            child = parents.take(torch.arange(len(parents), device=self.device))
            child.splits = {k: v.clone() for k, v in child.splits.items()}
            for (k, start), end in zip(spans, [s for _, s in spans[1:]] + [None]):
                width = child.splits[k].shape[1]
                mine = (at >= start) & (at < start + width)
                if bool(mine.any()):
                    rows_ = torch.nonzero(mine).squeeze(1)
                    child.splits[k][rows_, at[rows_] - start] = phase
            children.append(child)
        self.domains = Domains.cat([self.domains, *children]) if len(self.domains) else \
            Domains.cat(children)


def search(net: Network, spec: Specification, options: ReluBaBOptions,
           deadline: Optional[deadlines.Deadline] = None) -> SearchResult:
    """Prove every row of C f(x) - d > 0 over the set, or find a point where one is <= 0."""
    deadline = deadline or deadlines.active().sooner(options.timeout or None)
    return ReluSearch(net, spec, options, deadline).run()


def certify(net: Network, specs: Sequence[Specification], options: ReluBaBOptions
            ) -> list[Certificate]:
    """Complete robustness check of each specification by ReLU-split branch and bound."""
    from ..attack import AttackOptions, find_counterexample

    out = []
    for spec in specs:
        t0 = time.perf_counter()
        deadline = deadlines.active().sooner(options.timeout or None)
        candidates = []
        if options.attack:
            x = find_counterexample(net, spec, AttackOptions(device=options.device))
            if x is not None:
                candidates.append(x)
        m = spec.output.C.shape[0]
        lower, reason, cost = np.full(m, -np.inf), "", {}
        if not candidates:
            result = search(net, spec, options, deadline)
            lower = result.row_lower if result.status != "sat" else lower
            if result.counterexample is not None:
                candidates.append(result.counterexample)
            if result.status == "unknown":
                reason = f"relu-bab stopped: {result.reason or 'undecided'}"
                lower = np.minimum(lower, 0.0) if np.all(lower > 0) else lower
            cost = {"domains": result.domains, "leaf_lps": result.leaf_lps,
                    "rounds": result.rounds}
        out.append(certificate_from_bounds(net, spec, "relu-bab", lower, candidates=candidates,
                                           reason=reason, time_s=time.perf_counter() - t0,
                                           cost=cost))
    return out
