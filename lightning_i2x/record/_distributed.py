"""The probe pass under DDP, with gathers that do not grow with N x d.

Each rank runs its contiguous share of the probe in whole probe batches (``batch_share``) and
streams its features into its own ``PrototypeStream``; what crosses between ranks is what the fit
needs, not the features:

1. rank 0 first runs the probe's first batches, as one process would, until its stream has fitted
   the projection subspace; it broadcasts the basis and mean (d x k), and every rank projects its
   share with it (``head_images``: none when d <= n_components, there is nothing to fit);
2. every rank sends the float64 moments of each of its batches' projected rows (1 + k + k x k per
   batch); rank 0 adds them in probe order, computes the exact PCA inside the subspace and
   broadcasts its axes (k x p);
3. every rank sends only its rows of the k-means sample, which is a function of N and the seed
   (``prototypes.kmeans_sample``: at most K x (64 + max_points_per_centroid) rows); rank 0 fits the
   centroids and broadcasts them with the previous assignment (N x h x w int32, for the id matching);
4. every rank assigns its own locations and sends back the per-location and per-image results:
   assignment, distances, maps, confidences and pooled features (inherently N x h x w, N x M and
   N x d), with its members' sums by previous id (K x p) for the matching.

Rank 0's run then equals the one-process run to the bit where the forward gives the same numbers
for the same batch: the same batches, the same subspace, the moments added in the same order, the
same sample rows, the same k-means. Not to the bit: the distances (FAISS's search expands
|y - c|^2 with BLAS over blocks of queries, and each rank searches its own rows) and the member
sums, added rank by rank, which decide the id permutation and could change it only at a tie.

Probes too small to fit a subspace (N x h x w < sample_locations: at most that many feature
vectors) and the channel prototype source (EPIC needs every location's features) gather the
activations whole (``gather_evidence``), a size bounded by sample_locations x d in the first case.

Every rank calls the same collectives with the same shapes in the same order; a failure anywhere
(a rank's probe pass, rank 0's fit) travels as a flag in the next collective and every rank stops
after that one, so none is left waiting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..prototypes import Prototypes, PrototypeStream, kmeans_sample, match_order, member_sums, nearest_prototypes, train_centroids
from ..saliency import TargetLayer
from ._pipeline import ProbeEvidence, Recorder, gather_evidence, probe_share

__all__ = ["Group", "distributed_probe_pass", "head_images"]


@dataclass(frozen=True)
class Group:
    """The collectives of one record: ``all_gather(t)`` -> (world, *t.shape) on every rank, and
    ``broadcast(t)`` -> rank 0's ``t`` on every rank (same shape and dtype everywhere)."""

    rank: int
    world: int
    all_gather: Callable[[torch.Tensor], torch.Tensor]
    broadcast: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device | str = "cpu"

    def gather(self, a: np.ndarray) -> np.ndarray:
        return self.all_gather(torch.from_numpy(np.ascontiguousarray(a)).to(self.device)).cpu().numpy()

    def bcast(self, a: np.ndarray) -> np.ndarray:
        return self.broadcast(torch.from_numpy(np.ascontiguousarray(a)).to(self.device)).cpu().numpy()


Guard = Callable[..., Any]
"""``guard(where, fn, *args, **kw)``: ``fn``'s result, or None after the failure was reported."""


def head_images(num_probe: int, locations: int, dim: int, stream: PrototypeStream, batch_size: int) -> int:
    """How many of the probe's first images rank 0 runs before the others can project: the batches
    after which one process's stream fits its subspace (0 when d <= n_components)."""
    if dim <= stream.n_components:
        return 0
    need = -(-stream.sample_locations // locations)
    return min(num_probe, -(-need // batch_size) * batch_size)


def batch_share(rank: int, world: int, num_probe: int, batch_size: int) -> slice:
    """The contiguous share of the probe ``rank`` of ``world`` runs here: whole probe batches, so
    every rank's batches are one process's batches (the same inputs to the forward, the same
    rows per batch of the stream)."""
    batches = -(-num_probe // batch_size)
    per = -(-batches // world) * batch_size
    return slice(min(rank * per, num_probe), min((rank + 1) * per, num_probe))


def _owned(rank: int, world: int, num_probe: int, head: int, batch_size: int) -> slice:
    """The images whose results ``rank`` sends: its share, rank 0's extended over the head."""
    part = batch_share(rank, world, num_probe, batch_size)
    if rank == 0:
        return slice(0, max(part.stop, head))
    return slice(max(part.start, head), max(part.stop, head))


def distributed_probe_pass(group: Group, run_pass: Callable[..., ProbeEvidence], guard: Guard, images: torch.Tensor, labels: torch.Tensor,
                           recorder: Recorder, layer: TargetLayer, *, batch_size: int,
                           previous: Callable[[], np.ndarray | None]) -> ProbeEvidence | None:
    """The whole probe's evidence on rank 0, its prototypes already fitted (the evidence's stream
    returns them); None on the other ranks and when any rank failed (rank 0 reports which).
    ``run_pass(images, labels, stream=...)`` is the probe pass; ``previous()`` (rank 0) the run's
    current assignment, read once every pass is done."""
    d, h, w = layer.feature_shape
    num_probe, locations = images.shape[0], h * w
    if recorder.prototypes.source == "channels":  # the stream made now holds the head read at this pass, not a later one's
        evidence = _whole(group, run_pass, guard, images, labels, layer)
        return None if evidence is None else dataclasses.replace(evidence, stream=recorder.new_stream())
    stream = recorder.new_stream()
    if num_probe * locations < stream.sample_locations:
        return _whole(group, run_pass, guard, images, labels, layer)
    head = head_images(num_probe, locations, d, stream, batch_size)
    own = _owned(group.rank, group.world, num_probe, head, batch_size)
    parts: list[ProbeEvidence | None] = []
    if group.rank == 0 and head:
        parts.append(guard("probe pass", run_pass, images[:head], labels[:head], stream=stream))
    if head:  # 1. the subspace
        k = min(stream.n_components + stream.n_oversamples, d)
        sent = np.zeros(1 + d + d * k, dtype=np.float32)
        if group.rank == 0 and parts[0] is not None:
            basis, mean = stream.subspace
            sent[0], sent[1 : 1 + d], sent[1 + d :] = 1, mean.cpu().numpy(), basis.cpu().numpy().reshape(-1)
        got = group.bcast(sent)
        if got[0] == 0:
            return None  # rank 0's failure is reported already
        if group.rank:
            stream.set_subspace(torch.from_numpy(got[1 + d :].reshape(d, k)).to(group.device), torch.from_numpy(got[1 : 1 + d]).to(group.device))
    else:
        k = d
    tail = slice(max(own.start, head), own.stop)
    if tail.stop > tail.start:
        parts.append(guard("probe pass", run_pass, images[tail], labels[tail], stream=stream))
    ok = all(p is not None for p in parts)
    owned = [_owned(r, group.world, num_probe, head, batch_size) for r in range(group.world)]
    bound = max(-(-(o.stop - o.start) // batch_size) for o in owned) + 1  # + 1: rank 0's head may end inside a batch (head = N)
    sent = np.zeros((1 + bound, 1 + k + k * k))  # row 0: [ok, batches]; then this rank's batch moments (2. the PCA)
    if ok and stream.num_vectors:
        mine = stream.batch_moments()
        sent[1 : 1 + len(mine)], sent[0, 1] = mine, len(mine)
    sent[0, 0] = ok
    moments = group.gather(sent)
    failed = [r for r in range(group.world) if moments[r, 0, 0] == 0]
    if failed:
        if group.rank == 0 and ok:
            guard("probe pass", _raise, RuntimeError(f"the probe pass failed on rank(s) {failed}"))
        return None
    fit = _Fit(group, guard, stream, recorder, num_probe * locations, k, [slice(o.start * locations, o.stop * locations) for o in owned])
    y = fit.rotate(moments)
    centroids = None if y is None else fit.centroids(y, previous)
    if centroids is None:
        return None
    return fit.results(y, *centroids, parts, layer)


class _Fit:
    """Steps 2-4 of the module docstring on one rank (rank 0 computes, every rank takes part);
    ``rows[r]``: the feature vectors (locations) rank r holds, in probe order."""

    def __init__(self, group: Group, guard: Guard, stream: PrototypeStream, recorder: Recorder, n: int, k: int, rows: list[slice]):
        self.group, self.guard, self.stream, self.n, self.k, self.rows = group, guard, stream, n, k, rows
        self.K, self.reduced = recorder.num_prototypes, stream.subspace is not None
        self.projection, self.bias = np.eye(k, dtype=np.float32), np.zeros(k, dtype=np.float32)  # d <= n_components: no reduction

    def rotate(self, moments: np.ndarray) -> np.ndarray | None:
        """2. this rank's rows on the PCA axes, which rank 0 computes from the summed moments (d <=
        n_components: the vectors themselves, as one process; rank 0 only checks them finite)."""
        k, stream = self.k, self.stream
        p = min(stream.n_components, k)
        sent = np.zeros(1 + (k + k * p if self.reduced else 0))
        if self.group.rank == 0:
            m = np.zeros(moments.shape[2])
            for r in range(self.group.world):  # batch by batch in probe order from zero: one process's sums, to the bit
                for b in moments[r, 1 : 1 + int(moments[r, 0, 1])]:
                    m += b
            if self.reduced:
                out = self.guard("record", stream.rotation, int(m[0]), m[1 : 1 + k], m[1 + k :].reshape(k, k))
                if out is not None:
                    zbar, v, self.projection, self.bias = out
                    sent[0], sent[1 : 1 + k], sent[1 + k :] = 1, zbar, v.reshape(-1)
            else:
                sent[0] = self.guard("record", _finite, m) is not None
        got = self.group.bcast(sent)
        if got[0] == 0:
            return None
        return self._own_rows(got[1 : 1 + k], got[1 + k :].reshape(k, p)) if self.reduced else self._own_rows(None, None)

    def _own_rows(self, zbar, v) -> np.ndarray:
        if self.stream.num_vectors == 0:
            return np.zeros((0, self.k if v is None else v.shape[1]), dtype=np.float32)
        return self.stream.rotated(zbar, v)

    def centroids(self, y: np.ndarray, previous: Callable[[], np.ndarray | None]) -> tuple[np.ndarray, np.ndarray | None] | None:
        """3. the sample's rows to rank 0; its centroids and the previous assignment back."""
        s, K, g, p = self.stream, self.K, self.group, y.shape[1]
        init, train = kmeans_sample(self.n, K, seed=s.seed, max_points_per_centroid=s.max_points_per_centroid)
        wanted = np.arange(self.n) if train is None else np.union1d(init, train)  # all: at most K x max_points_per_centroid
        cuts = np.searchsorted(wanted, [[r.start, r.stop] for r in self.rows])
        sent = np.zeros((int((cuts[:, 1] - cuts[:, 0]).max()), p), dtype=np.float32)
        mine = wanted[cuts[g.rank, 0] : cuts[g.rank, 1]] - self.rows[g.rank].start
        sent[: mine.size] = y[mine]
        got = g.gather(sent)
        out, prev = np.zeros(1 + K * p, dtype=np.float32), np.zeros(1 + self.n, dtype=np.int32)
        if g.rank == 0:
            sample = np.concatenate([got[r, : cuts[r, 1] - cuts[r, 0]] for r in range(g.world)])  # the rows of `wanted`, in order
            pick = lambda idx: sample if idx is None else sample[np.searchsorted(wanted, idx)]  # noqa: E731
            c = self.guard("record", train_centroids, pick(init), pick(train), K, niter=s.niter, seed=s.seed,
                           max_points_per_centroid=s.max_points_per_centroid, use_gpu=s.use_gpu)
            before = self.guard("record", previous)  # after every pass: the analysis in flight has had them to finish
            if c is not None:
                out[0], out[1:] = 1, c.reshape(-1)
            if before is not None:
                prev[0], prev[1:] = 1, before.reshape(-1)
        got_c, got_prev = g.bcast(out), g.bcast(prev)
        if got_c[0] == 0:
            return None
        return got_c[1:].reshape(K, p), (got_prev[1:] if got_prev[0] else None)

    def results(self, y: np.ndarray, centroids: np.ndarray, prev: np.ndarray | None, parts: list[ProbeEvidence],
                layer: TargetLayer) -> ProbeEvidence | None:
        """4. every rank assigns its own locations; rank 0 gathers the per-location results and matches the ids."""
        g, K, (d, h, w), m = self.group, self.K, layer.feature_shape, layer.num_classes
        hw = h * w
        protos = Prototypes(self.projection, self.bias, centroids)
        dist, assignment = nearest_prototypes(protos, y, self.stream.use_gpu)
        mine = self.rows[g.rank]
        sums = member_sums(y, prev[mine], K)[0] if prev is not None else np.zeros((K, y.shape[1]))
        sizes = [(r.stop - r.start) // hw for r in self.rows]
        block = np.zeros((max(sizes), 2 * hw + m + d), dtype=np.float32)  # per image: maps, distances, confidences, pooled
        ids = np.zeros((max(sizes), hw), dtype=np.int32)
        n_own = sizes[g.rank]
        if n_own:
            cams, confs, pooled = (torch.cat([getattr(p, a) for p in parts]).float().cpu().numpy() for a in ("cams", "confidences", "pooled"))
            block[:n_own] = np.concatenate([cams.reshape(n_own, hw), dist.reshape(n_own, hw), confs, pooled], axis=1)
            ids[:n_own] = assignment.reshape(n_own, hw)
        got_block, got_ids, got_sums = g.gather(block), g.gather(ids), g.gather(sums.reshape(-1))
        if g.rank:
            return None
        block = np.concatenate([got_block[r, : sizes[r]] for r in range(g.world)])
        assignment = np.concatenate([got_ids[r, : sizes[r]] for r in range(g.world)]).reshape(-1).astype(np.int64)
        raw = np.ascontiguousarray(block[:, hw : 2 * hw]).reshape(-1)
        protos.inertia = float(raw.sum(dtype=np.float64))  # in probe order, as one process
        if prev is not None:
            counts = np.bincount(prev, minlength=K)[:K].astype(np.float64)
            order = match_order(got_sums.sum(axis=0).reshape(K, -1), counts, protos.centroids)
            protos = Prototypes(protos.projection, protos.bias, protos.centroids[order], protos.inertia)
            assignment = np.argsort(order)[assignment]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        return ProbeEvidence(None, t(block[:, :hw].reshape(-1, h, w)), t(block[:, 2 * hw : 2 * hw + m]),
                             _Fitted(protos, assignment, np.maximum(raw, 0), prev), pooled=t(block[:, 2 * hw + m :]))


@dataclass
class _Fitted:
    """The prototypes fitted across the ranks, with ``PrototypeStream.fit``'s contract for
    ``Recorder.append``: they were matched to ``previous``, so the run must still hold it."""

    prototypes: Prototypes
    assignment: np.ndarray
    distances: np.ndarray
    previous: np.ndarray | None

    def fit(self, previous_assignment: np.ndarray | None = None):
        given = None if previous_assignment is None else np.asarray(previous_assignment).reshape(-1)
        same = given is None if self.previous is None else given is not None and np.array_equal(given, self.previous)
        if not same:
            raise ValueError("the run's prototypes changed between the distributed fit and this record: "
                             "the ids were matched to another assignment than the run holds now")
        return self.prototypes, self.assignment, self.distances


def _whole(group: Group, run_pass, guard: Guard, images, labels, layer: TargetLayer) -> ProbeEvidence | None:
    """Every rank's whole activations, maps and confidences (``gather_evidence``); rank 0 fits."""
    part = probe_share(group.rank, group.world, images.shape[0])
    local = None if part.start == part.stop else guard("probe pass", run_pass, images[part], labels[part], stream=None)
    sent = local if part.start < part.stop else ProbeEvidence.empty(layer.feature_shape, layer.num_classes, group.device)
    evidence, failed = gather_evidence(group.all_gather, sent, rank=group.rank, world=group.world, num_probe=images.shape[0],
                                       feature_shape=layer.feature_shape, num_classes=layer.num_classes, device=group.device)
    if failed and group.rank == 0 and local is not None:  # rank 0's own failure is already reported
        guard("probe pass", _raise, RuntimeError(f"the probe pass failed on rank(s) {failed}"))
    return evidence if group.rank == 0 else None


def _raise(error: Exception) -> None:
    raise error


def _finite(moments: np.ndarray) -> bool:
    if not np.all(np.isfinite(moments)):
        raise ValueError("features contain NaN or inf: the model's activations at the target layer are not finite")
    return True
