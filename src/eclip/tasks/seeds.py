"""Training seeds: several trained models under one name, evaluated one by one, reported as one.

``eclip demo --seeds N`` and ``eclip eval --models eclip=DIR1,DIR2,DIR3`` give a name one model per
training seed. The suite evaluates each seed as a model of its own, named ``NAME#k`` (its own
views, jobs, probe fits and retrieval files), and folds them back into ``NAME`` before the
bootstrap:

- **rows** (``fold_rows``): ``value`` is the mean over the seeds of the per-seed values,
  ``seed_std`` the sample standard deviation across the seeds (ddof = 1), ``seeds`` their number;
  ``std`` (the spread of the probe seeds within one model) becomes the pooled one, the root mean
  square of the per-seed stds. The per-seed rows are kept in ``Report.seed_rows``.
- **outcomes** (``pool_outcomes``): the per-item outcomes of the seeds (``bootstrap.Items``) are
  stacked on the seed axis that ``Items`` already has for probe seeds (``[seeds, n]``). On every
  catalog resample the bootstrap then computes the metric of each seed and takes their mean: the
  statistic is exactly the seed mean that the folded row reports, so a comparison's delta is the
  difference of the folded rows.

Why this, and not the per-item outcomes averaged across seeds before resampling: for mean-type
metrics (accuracy, per-query AP / RR / nDCG / recall) the two are the same number, since the mean
of per-seed means is the mean of the per-item means. For the others they are not: an AUC of
scores averaged item by item measures the *ensemble* of the seeds (whose score scales need not
agree: each seed's probe and joint space has its own), not the typical single trained model that
the row reports, and micro-F1 and B-cubed F1 are not linear in their items. Averaging per seed on
each resample is what "bootstrap each seed and average the deltas" gives, with one difference
that matters: every seed and every model is recomputed on the *same* resamples, so the interval is
the percentile interval of the seed-mean difference itself (an average of per-seed intervals has
no coverage meaning).

What the interval covers: the sampling of the test catalogs, for the mean over these seeds. The
spread across training seeds is ``seed_std``, shown beside it (``mean ± seed std``); with 3 seeds an
interval over seeds would say little, so the two are reported side by side, not merged.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from eclip.errors import ConfigError
from eclip.tasks.bootstrap import Items
from eclip.tasks.report import Row

SEP = "#"  # NAME#k: the k-th training seed of model NAME inside the suite


def base_name(name: str) -> str:
    """``eclip#1`` -> ``eclip``; a name without a seed is its own base."""
    return name.partition(SEP)[0]


def expand_seeds(models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``{name: model or [model per seed]}`` -> ``({name or name#k: model}, {name: its names})``.

    A list of one model is that model under its own name (no folding)."""
    flat: dict[str, Any] = {}
    members: dict[str, list[str]] = {}
    for name, value in models.items():
        if SEP in name:
            raise ConfigError(f"model name {name!r}: '{SEP}' is reserved for training seeds "
                              f"(NAME{SEP}k); rename the model")
        seeds = list(value) if isinstance(value, (list, tuple)) else [value]
        if not seeds:
            raise ConfigError(f"model '{name}' has no model directory")
        names = [name] if len(seeds) == 1 else [f"{name}{SEP}{k}" for k in range(len(seeds))]
        flat.update(zip(names, seeds))
        members[name] = names
    return flat, members


def seeded(members: dict[str, list[str]]) -> dict[str, str]:
    """``{NAME#k: NAME}`` for the names that have several seeds."""
    return {n: base for base, names in members.items() if len(names) > 1 for n in names}


def fold(rows: list[Row], model: str) -> Row:
    """One row from the rows of one (task, modality, metric) of every seed of ``model``."""
    values = np.asarray([r.value for r in rows], dtype=np.float64)
    stds = [r.std for r in rows]
    std = (None if any(s is None for s in stds)
           else float(np.sqrt(np.mean(np.square(np.asarray(stds, dtype=np.float64))))))
    first = rows[0]
    return Row(first.task, first.modality, model, first.metric, float(values.mean()), std,
               seed_std=float(values.std(ddof=1)) if len(values) > 1 else None,
               seeds=len(values))


def fold_rows(rows: list[Row], members: dict[str, list[str]]) -> tuple[list[Row], list[Row]]:
    """``(rows with every seeded model folded into its name, the per-seed rows)``; a folded row
    takes the place of its first seed's row, the other rows keep theirs."""
    to_base = seeded(members)
    order: list[Row | tuple] = []
    groups: dict[tuple, list[Row]] = {}
    per_seed = []
    for row in rows:
        base = to_base.get(row.model)
        if base is None:
            order.append(row)
            continue
        per_seed.append(row)
        key = (row.task, row.modality, base, row.metric)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(row)
    return [fold(groups[x], x[2]) if isinstance(x, tuple) else x for x in order], per_seed


def stack_items(parts: list[Items]) -> Items | None:
    """The outcomes of several seeds on the same items as one ``Items`` with every seed on its seed
    axis; None when they are not on the same items (then they cannot be paired)."""
    first = parts[0]
    for p in parts[1:]:
        if p.kind != first.kind or not np.array_equal(p.groups, first.groups):
            return None
    values = {}
    for key, value in first.values.items():
        if key == "labels":  # the truth, the same for every seed
            if any(not np.array_equal(p.values[key], value) for p in parts[1:]):
                return None
            values[key] = value
        else:
            values[key] = np.concatenate([p.values[key] for p in parts], axis=0)
    return Items(first.kind, first.groups, values)


def pool_outcomes(outcomes: dict[tuple, Items], members: dict[str, list[str]],
                  log: Callable[[str], None] = print) -> dict[tuple, Items]:
    """``ctx.outcomes`` with the seeds of every seeded model stacked under its name (seed order)."""
    to_base = seeded(members)
    out: dict[tuple, Items] = {}
    pooled: dict[tuple, dict[str, Items]] = {}
    for key, items in outcomes.items():
        task, modality, model, metric = key
        base = to_base.get(model)
        if base is None:
            out[key] = items
        else:
            pooled.setdefault((task, modality, base, metric), {})[model] = items
    for key, by_seed in pooled.items():
        parts = [by_seed[n] for n in members[key[2]] if n in by_seed]
        stacked = stack_items(parts)
        if stacked is None:
            log(f"bootstrap: {'/'.join(key[:2])}/{key[3]}: the seeds of {key[2]} were measured on "
                "different items; no interval")
            continue
        if len(parts) < len(members[key[2]]):
            log(f"bootstrap: {'/'.join(key[:2])}/{key[3]}: {len(parts)} of "
                f"{len(members[key[2]])} seeds of {key[2]} kept outcomes")
        out[key] = stacked
    return out
