"""The planted model of the synthetic generator: how features are drawn and how labels follow from them.

Notation: F sparse fields, field f's id ``x_f`` (a bag for multi-hot fields: effects are averaged over
the bag), T tasks, k = ``interaction_rank``, C = ``num_clusters``. Field 0 plays the user, field 1 the
item; ``c = cluster(x_0)`` and ``g = category(x_1)`` are fixed hashes of the ids into ``[0, C)``.

    logit_t = b_t + id_t + s_pair * pair + s_hier * hier + s_seq * seq + s_dense * dense + s_dom * dom
              + s_cross * cross

    id_t   = sum_f e_{t,f}[x_f],           e ~ N(0, id_effect_scale^2) per id, task t>0 correlated by rho
    pair   = sum_{f<h} A_fh <v_f[x_f], v_h[x_h]>                        (low-rank field interactions)
    hier   = M[c, g] + 1/sqrt(F-2) sum_{f>=2} <P_c q_f[x_f], r_g>       (cluster-routed 3-way term)
    seq    = sum_j decay^(L-1-j) (1[g(h_j) = g] + 1[h_j = x_item])     (recency-weighted history match)
    dense  = beta . z,  z ~ N(0, I)
    dom    = a_d + D[d, g]
    cross  = mean_{h in B} K[g, g(h)]                                 (candidate x domain-B history)

Every per-id quantity (``e``, ``v``, ``q``, clusters, categories) is a hash of the id, so tables of
any size cost no memory. ``cross`` (off unless ``cross_domain_scale > 0``) reads only the history B of
``cross_domain_sequence`` (the user's domain-B taste: which categories their B events fall in, matched
to the candidate's category through a fixed random ``K [C, C]``; 0 for an empty history). K's rows
are centred on the category frequencies of B events (pilot), so ``E[cross | candidate] = 0``: the
candidate alone does not predict it, and as every sequence is drawn independently, no other history
carries it. ``pair``, ``hier``, ``seq``, ``dense``, ``dom`` and ``cross`` are centred and scaled to
unit standard deviation on a pilot sample, so each ``s_*`` is the standard deviation of its term in
the logit; ``b_t`` is solved on the pilot so the mean click probability is ``click_rate``. The label
is ``Bernoulli(sigmoid(logit_t))``; the oracle is ``sigmoid(logit_t)``.

Multi-task, multi-domain data adds each task's own terms (``planted_tasks.py``) and can shift the item
distribution per domain (``domain_feature_shift``). A ``conversion_label`` task's bias is solved for
``conversion_rate``: its probability is p(conversion | click) and ``synthetic.py`` observes it only on
clicked rows. For feature selection, ``useless_features`` are drawn but enter no term (their dense weights,
pair weights, id effects and hierarchical context are zero) and ``task_features`` limit the fields whose id
effects enter a task's id term (``planted_tasks.planted_feature_masks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recscale.configs.schema import EmbeddingsConfig, FeatureSchemaConfig, SyntheticConfig
from recscale.data.columns import table_rows
from recscale.data.hashing import mix64, normal_from_hash
from recscale.data.partition import seed_words
from recscale.data.planted_math import scatter, sigmoid, solve_bias, zipf_ranks
from recscale.data.planted_tasks import TASK_TERMS, Drift, TaskTerms, planted_feature_masks
from recscale.data.ragged import Ragged

PILOT_ROWS = 65_536
"""Rows of the pilot sample that fixes the term scales and the biases."""
NORMALISED_TERMS = ("pair", "hier", "seq", "dense", "dom", "cross")


@dataclass
class Inputs:
    """One chunk of drawn features (n rows)."""

    sparse: list[np.ndarray | Ragged]
    """Per sparse field: ids ``[n]`` (single-hot) or a Ragged bag."""
    dense: np.ndarray
    """``[n, N]`` float32."""
    sequences: list[Ragged]
    """Per sequence: item ids, oldest first."""
    timestamps: list[Ragged]
    """Per sequence: event times (seconds), increasing."""
    domain: np.ndarray | None
    """``[n]`` int64."""
    day: np.ndarray | None = None
    """``[n]`` int64 day of each impression (the truth drifts by day); None = day 0."""


def domain_groups(synth: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(group_of [D], group_domain [D])``: each domain's group, and the domain whose truth it reads.

    The truth read is the group's first domain's. Without ``domain_groups`` every domain is its own group.
    """
    group_of = np.arange(synth.num_domains, dtype=np.int64)
    group_domain = np.arange(synth.num_domains, dtype=np.int64)
    for g, members in enumerate(synth.domain_groups):
        group_of[members] = g
        group_domain[members] = min(members)
    return group_of, group_domain


class PlantedModel:
    """The generator's ground truth (see the module docstring)."""

    def __init__(self, features: FeatureSchemaConfig, embeddings: EmbeddingsConfig, synth: SyntheticConfig) -> None:
        self.features = features
        self.synth = synth
        rows = table_rows(embeddings)
        self.field_rows = [rows[s.table] for s in features.sparse]
        self.sequence_rows = [rows[q.table] for q in features.sequences]
        num_fields = len(features.sparse)
        self.multi_hot = [synth.multi_hot_max > 1 and f >= 2 for f in range(num_fields)]
        self.num_tasks = len(features.labels)
        rng = np.random.default_rng(seed_words(synth.seed, 7))
        self.salt = int(rng.integers(1, 1 << 62))
        k, c = synth.interaction_rank, synth.num_clusters
        self.pair_weights = np.triu(rng.standard_normal((num_fields, num_fields)), 1)
        self.cluster_bias = rng.standard_normal((c, c))
        self.cluster_maps = rng.standard_normal((c, k, k)) / math.sqrt(k)
        self.category_keys = rng.standard_normal((c, k))
        self.dense_weights = rng.standard_normal(len(features.dense))
        self.domain_bias = rng.standard_normal(synth.num_domains)
        self.domain_category = rng.standard_normal((synth.num_domains, c))
        self.group_of, self.group_domain = domain_groups(synth)
        self.candidate = self._candidate_fields()
        # own generator, so the arrays above (and the data of configs without the term) stay as they were
        self.cross_matrix = np.random.default_rng(seed_words(synth.seed, 11)).standard_normal((c, c))
        self.cross_sequence = self._cross_sequence()
        self.task_terms = TaskTerms(synth, self.num_tasks, num_fields)
        self.drift = Drift(synth, len(features.dense))
        # useless_features / task_features mask what was drawn: the data of configs without them stays as it was
        self.useless_fields, useless_dense, self.task_fields = planted_feature_masks(features, synth)
        self.dense_weights[useless_dense] = 0.0
        for weights in (self.pair_weights, *self.task_terms.pair_weights):
            weights[self.useless_fields, :] = 0.0
            weights[:, self.useless_fields] = 0.0
        self.conversion = features.labels.index(synth.conversion_label) if synth.conversion_label else -1
        self.term_mean: dict[str, float] = {}
        self.term_std: dict[str, float] = {}
        self.task_mean: dict[str, np.ndarray] = {}
        self.task_std: dict[str, np.ndarray] = {}
        self.bias = np.zeros(self.num_tasks)
        self.cross_share = 0.0
        self._calibrate()

    # ------------------------------------------------------------------------------ drawing inputs

    def _candidate_fields(self) -> list[int]:
        """Per sequence, the sparse field its history is matched against (same table, else field 1)."""
        out = []
        for q in self.features.sequences:
            same = [f for f, s in enumerate(self.features.sparse) if s.table == q.table]
            out.append(same[0] if same else min(1, len(self.features.sparse) - 1))
        return out

    def _cross_sequence(self) -> int | None:
        """Index of the domain-B sequence of the cross-domain term (None: the term is off)."""
        names = [q.name for q in self.features.sequences]
        if self.synth.cross_domain_scale <= 0 or len(self.features.sparse) < 2:
            return None
        if self.synth.cross_domain_sequence:
            return names.index(self.synth.cross_domain_sequence)
        return 1 if len(names) >= 2 else None

    def draw(self, n: int, rng: np.random.Generator, first_row: int) -> Inputs:
        """Draw n examples' features (``first_row`` numbers them, for timestamps)."""
        s = self.synth
        shift = (s.domain_feature_shift > 0 or bool(s.domain_groups)) and bool(self.features.domain)
        domain = self._domains(n, rng) if shift else None  # drawn first only when the features depend on it
        sparse: list[np.ndarray | Ragged] = []
        for f, num_ids in enumerate(self.field_rows):
            salt = self.salt + 101 * f
            if self.multi_hot[f]:
                lengths = rng.integers(1, s.multi_hot_max + 1, n)
                ids = self._ids(rng.random(int(lengths.sum())), num_ids, salt)
                sparse.append(Ragged.from_lengths(lengths, ids))
            elif f == 0 and domain is not None and s.domain_groups:
                sparse.append(self._group_users(rng.random(n), self.group_of[domain], num_ids, salt))
            elif f == 1 and domain is not None and s.domain_feature_shift > 0:
                sparse.append(self._shifted_ids(rng, self.group_domain[domain], num_ids, salt))
            else:
                sparse.append(self._ids(rng.random(n), num_ids, salt))
        dense = rng.standard_normal((n, len(self.features.dense)), dtype=np.float32)
        sequences, timestamps = [], []
        for i, q in enumerate(self.features.sequences):
            lengths = rng.integers(0, q.max_length + 1, n)
            total = int(lengths.sum())
            sequences.append(Ragged.from_lengths(lengths, self._ids(rng.random(total), self.sequence_rows[i], 7 + i)))
            gaps = rng.exponential(3600.0, total).astype(np.int64) + 1
            request = 1_700_000_000 + (first_row + np.arange(n, dtype=np.int64)) * 10
            # newest event is `gap` before the request; walk back to the oldest, then store oldest first
            ends = np.cumsum(lengths)
            back = np.cumsum(gaps[::-1])[::-1]  # suffix sums over the whole array
            suffix_end = np.append(back, 0)[ends]
            times = np.repeat(request, lengths) - (back - np.repeat(suffix_end, lengths))
            timestamps.append(Ragged.from_lengths(lengths, times))
        if domain is None and self.features.domain:
            domain = self._domains(n, rng)
        return Inputs(sparse, dense, sequences, timestamps, domain)

    def _domains(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Domain ids ``[n]``, domain d with probability proportional to 1 / (d + 1)."""
        weights = 1.0 / np.arange(1, self.synth.num_domains + 1)
        return rng.choice(self.synth.num_domains, size=n, p=weights / weights.sum()).astype(np.int64)

    def _shifted_ids(self, rng: np.random.Generator, domain: np.ndarray, num_ids: int, salt: int) -> np.ndarray:
        """Item ids where a ``domain_feature_shift`` share of domain d > 0 follows d's own popularity order."""
        u = rng.random(len(domain))
        ids = self._ids(u, num_ids, salt)
        moved = (rng.random(len(domain)) < self.synth.domain_feature_shift) & (domain > 0)
        for d in np.unique(domain[moved]):
            rows = moved & (domain == d)
            ids[rows] = self._ids(u[rows], num_ids, salt + 7777 * int(d))
        return ids

    def _group_users(self, u: np.ndarray, group: np.ndarray, num_ids: int, salt: int) -> np.ndarray:
        """User ids of rows in ``group [n]``: Zipf over the group's own slice of ``num_ids // G`` ids."""
        size = num_ids // len(self.synth.domain_groups)
        ids = scatter(zipf_ranks(u, size, self.synth.zipf_exponent), size, self.salt + salt)
        return ids + group * size

    def _ids(self, u: np.ndarray, num_ids: int, salt: int) -> np.ndarray:
        return scatter(zipf_ranks(u, num_ids, self.synth.zipf_exponent), num_ids, self.salt + salt)

    # ------------------------------------------------------------------------------ the logit

    def _field_mean(self, x: np.ndarray | Ragged, values: np.ndarray) -> np.ndarray:
        """Per-row mean of per-id ``values`` (``[n_ids, ...]``) over a bag; identity for single ids."""
        if isinstance(x, np.ndarray):
            return values
        running = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
        sums = running[x.offsets[1:]] - running[x.offsets[:-1]]
        return sums / np.maximum(x.lengths, 1).reshape(-1, *([1] * (values.ndim - 1)))

    def _ids_of(self, x: np.ndarray | Ragged) -> np.ndarray:
        return x if isinstance(x, np.ndarray) else x.values

    def _latent(self, x: np.ndarray | Ragged, salt: int) -> np.ndarray:
        """Per-row latent ``[n, k]`` of a field (bag mean), entries N(0, 1 / k)."""
        ids = self._ids_of(x)
        k = self.synth.interaction_rank
        values = np.stack([normal_from_hash(ids, salt + j) for j in range(k)], axis=1) / math.sqrt(k)
        return self._field_mean(x, values)

    def group(self, ids: np.ndarray, purpose: int) -> np.ndarray:
        """Cluster (purpose 0) or category (purpose 1) of raw ids, in ``[0, C)``."""
        return (mix64(ids, self.salt + 9973 * (purpose + 1)) % np.uint64(self.synth.num_clusters)).astype(np.int64)

    def raw_terms(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Every term of the logit before scaling: ``id`` is ``[n, T]``, the others ``[n]``."""
        s = self.synth
        n = len(inputs.dense)
        out: dict[str, np.ndarray] = {}
        ids_term = np.zeros((n, self.num_tasks))
        rho = s.task_correlation
        for f, x in enumerate(inputs.sparse):
            if f in self.useless_fields:
                continue
            reads = [fields is None or f in fields for fields in self.task_fields]
            base = self._field_mean(x, normal_from_hash(self._ids_of(x), self.salt + 1000 + f))
            if reads[0]:
                ids_term[:, 0] += base
            for t in range(1, self.num_tasks):
                if not reads[t]:
                    continue
                own = self._field_mean(x, normal_from_hash(self._ids_of(x), self.salt + 1000 + f + 7919 * t))
                ids_term[:, t] += rho * base + math.sqrt(max(0.0, 1.0 - rho * rho)) * own
        out["id"] = s.id_effect_scale * ids_term
        latents = [self._latent(x, self.salt + 2000 + 31 * f) for f, x in enumerate(inputs.sparse)]
        pair = np.zeros(n)
        for f in range(len(latents)):
            for h in range(f + 1, len(latents)):
                pair += self.pair_weights[f, h] * np.einsum("nk,nk->n", latents[f], latents[h])
        out["pair"] = pair
        out["hier"] = self._hierarchical(inputs)
        out["seq"] = self._sequence(inputs)
        out["dense"] = inputs.dense.astype(np.float64) @ self.dense_weights if len(self.dense_weights) else np.zeros(n)
        out["dom"] = np.zeros(n)
        if inputs.domain is not None and s.num_domains > 1 and len(inputs.sparse) >= 2:
            category = self.group(self._ids_of(inputs.sparse[1]), 1)
            truth = self.group_domain[inputs.domain]
            out["dom"] = self.domain_bias[truth] + self.domain_category[truth, category]
        out["cross"] = self._cross_domain(inputs)
        category = self.group(self._ids_of(inputs.sparse[1]), 1) if len(inputs.sparse) >= 2 else None
        truth = None if inputs.domain is None else self.group_domain[inputs.domain]
        out.update(self.task_terms.raw(latents, truth, category, n))
        return out

    def _cross_domain(self, inputs: Inputs) -> np.ndarray:
        """``mean_{h in B} K[g(item), g(h)]`` per row; 0 without a history (or with the term off)."""
        n = len(inputs.dense)
        if self.cross_sequence is None:
            return np.zeros(n)
        history = inputs.sequences[self.cross_sequence]
        category = self.group(self._ids_of(inputs.sparse[1]), 1)
        row = history.row_of_value()
        matched = self.cross_matrix[category[row], self.group(history.values, 1)]
        return np.bincount(row, weights=matched, minlength=n) / np.maximum(history.lengths, 1)

    def _hierarchical(self, inputs: Inputs) -> np.ndarray:
        n = len(inputs.dense)
        if len(inputs.sparse) < 2:
            return np.zeros(n)
        cluster = self.group(self._ids_of(inputs.sparse[0]), 0)
        category = self.group(self._ids_of(inputs.sparse[1]), 1)
        out = self.cluster_bias[cluster, category]
        context = inputs.sparse[2:]
        if context:
            keys = self.category_keys[category]  # [n, k]
            acc = np.zeros(n)
            for f, x in enumerate(context):
                if f + 2 in self.useless_fields:
                    continue
                q = self._latent(x, self.salt + 3000 + 37 * f)  # [n, k]
                routed = np.einsum("nij,nj->ni", self.cluster_maps[cluster], q)  # cluster c's map of q
                acc += np.einsum("ni,ni->n", routed, keys)
            out = out + acc / math.sqrt(len(context))
        return out

    def _sequence(self, inputs: Inputs) -> np.ndarray:
        n = len(inputs.dense)
        out = np.zeros(n)
        for i, history in enumerate(inputs.sequences):
            candidate = inputs.sparse[self.candidate[i]] if inputs.sparse else None
            if not isinstance(candidate, np.ndarray):
                continue  # no sparse field, or a multi-hot one: no single candidate item to match
            lengths = history.lengths
            row = history.row_of_value()
            age = np.repeat(history.offsets[1:], lengths) - 1 - np.arange(len(history.values))
            weight = self.synth.recency_decay**age
            same_category = self.group(history.values, 1) == self.group(candidate, 1)[row]
            same_item = history.values == candidate[row]
            out += np.bincount(row, weights=weight * (same_category + same_item), minlength=n)
        return out

    def _calibrate(self) -> None:
        """Fix the term scales and the per-task biases on a pilot sample."""
        inputs = self.draw(PILOT_ROWS, np.random.default_rng(seed_words(self.synth.seed, 99)), 0)
        if self.cross_sequence is not None:
            # centre K's rows on the categories of B events, so the candidate alone predicts nothing
            history = inputs.sequences[self.cross_sequence].values
            counts = np.bincount(self.group(history, 1), minlength=self.synth.num_clusters)
            self.cross_matrix -= (self.cross_matrix @ (counts / max(counts.sum(), 1)))[:, None]
        raw = self.raw_terms(inputs)
        for name in NORMALISED_TERMS:
            std = float(raw[name].std())
            self.term_mean[name] = float(raw[name].mean())
            self.term_std[name] = std if std > 1e-12 else 1.0
        for name in TASK_TERMS:
            self.task_mean[name] = raw[name].mean(axis=0)
            self.task_std[name] = np.where(raw[name].std(axis=0) > 1e-12, raw[name].std(axis=0), 1.0)
        logits = self._unbiased(raw)
        if self.cross_sequence is not None:
            cross = self.synth.cross_domain_scale * (raw["cross"] - self.term_mean["cross"]) / self.term_std["cross"]
            self.cross_share = float(cross.var() / logits[:, 0].var())
        drift = self._drift(inputs, np.zeros(len(inputs.dense), dtype=np.int64)) if self.drift.memory < 1 else None
        if drift is not None:  # a mean-reverting drift has its stationary spread on day 0 too: the rates hold
            logits = logits + drift[:, None]
        for t in range(self.num_tasks):
            rate = self.synth.conversion_rate if t == self.conversion else self.synth.click_rate
            self.bias[t] = solve_bias(logits[:, t], rate)

    def _unbiased(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        s = self.synth
        scales = {
            "pair": s.interaction_scale,
            "hier": s.hierarchical_scale,
            "seq": s.sequence_scale,
            "dense": s.dense_scale,
            "dom": s.domain_scale,
            "cross": s.cross_domain_scale if self.cross_sequence is not None else 0.0,
        }
        out = raw["id"].copy()
        for name in NORMALISED_TERMS:
            if scales[name] > 0:
                out += (scales[name] * (raw[name] - self.term_mean[name]) / self.term_std[name])[:, None]
        for name in TASK_TERMS:
            scale = self.task_terms.scales[name]
            if scale > 0:
                out += scale * (raw[name] - self.task_mean[name]) / self.task_std[name]
        return out

    def _drift(self, inputs: Inputs, day: np.ndarray | None) -> np.ndarray | None:
        """``[n]`` the drift of each row's logit on ``day``; None without drift."""
        if day is None or self.drift.rate <= 0 or len(inputs.sparse) < 2:
            return None
        cluster = self.group(self._ids_of(inputs.sparse[0]), 0)
        category = self.group(self._ids_of(inputs.sparse[1]), 1)
        return self.drift.term(day, inputs.dense.astype(np.float64), cluster, category)

    def probabilities(self, inputs: Inputs) -> np.ndarray:
        """True click probability per task ``[n, T]`` (float64)."""
        logits = self._unbiased(self.raw_terms(inputs)) + self.bias
        drift = self._drift(inputs, inputs.day)
        if drift is not None:
            logits += drift[:, None]
        return sigmoid(logits)

    def summary(self) -> dict[str, object]:
        """What the model is, for the claims JSON."""
        s = self.synth
        out: dict[str, object] = {
            "terms": "logit_t = b_t + id_t + s_pair*pair + s_hier*hier + s_seq*seq + s_dense*dense + s_dom*dom",
            "term_std_in_logit": {
                "id_per_field": s.id_effect_scale,
                "pair": s.interaction_scale,
                "hier": s.hierarchical_scale,
                "seq": s.sequence_scale if self.features.sequences else 0.0,
                "dense": s.dense_scale if self.features.dense else 0.0,
                "dom": s.domain_scale if self.features.domain and s.num_domains > 1 else 0.0,
            },
            "bias": self.bias.tolist(),
            "num_clusters": s.num_clusters,
            "interaction_rank": s.interaction_rank,
            "user_field": self.features.sparse[0].name if self.features.sparse else None,
            "item_field": self.features.sparse[1].name if len(self.features.sparse) > 1 else None,
            "multi_hot_fields": [f.name for f, m in zip(self.features.sparse, self.multi_hot) if m],
        }
        if any(scale > 0 for scale in self.task_terms.scales.values()):
            out["task_terms"] = {"std_in_logit": dict(self.task_terms.scales), "form": "planted_tasks.py"}
        if self.conversion >= 0:
            out["conversion"] = {"label": s.conversion_label, "given": self.features.labels[0]}
        if self.cross_sequence is not None:  # only with the term on: older claims stay as they were
            out["terms"] = f"{out['terms']} + s_cross*cross"
            out["term_std_in_logit"]["cross"] = s.cross_domain_scale  # type: ignore[index]
            out["cross_domain"] = {
                "sequence": self.features.sequences[self.cross_sequence].name,
                "share_of_logit_variance": self.cross_share,
            }
        return out
